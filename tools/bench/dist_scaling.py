#!/usr/bin/python3
"""tools/bench/dist_scaling.py — how data-parallel pretrain and finetune should scale on 8 and 64 H100s (a model,
not a measurement; docs/DISTRIBUTED.md §Scaling).

Per step and rank: compute = per-rank batch × FLOPs per image / (fraction × 989 TFLOP/s, the H100 SXM's dense bf16
peak); all-reduce = the fp32 gradients of every trainable parameter through a ring, hierarchical across nodes
(reduce-scatter and all-gather over NVLink inside a node of 8, all-reduce of each GPU's 1/8 over InfiniBand between
nodes). Without overlap a step is compute + all-reduce; with overlap the buckets travel while the backward
(2/3 of the compute) runs, except the last bucket, which waits for the end of the backward:
    t = max(compute, forward + all-reduce − last bucket) + last bucket.
Bandwidth terms only: latency (tens of µs per bucket), the optimizer step and the loader are left out.
Standard library only; prints markdown."""
import argparse

PEAK = 989e12  # H100 SXM dense bf16, FLOP/s

# FLOPs per image and step: docs/PERFORMANCE.md §FLOP model (step ≈ 3 × forward), reused as it counts them.
#   MAE, vit_b @1024, mask 0.75, decoder 512×8: 3 × (191 encoder on the visible tokens + 485 decoder) GFLOP.
#   fine-tuning, vit_b @1024: 3 × 972 GFLOP (SAM's encoder; the mask decoder is under 1 %).
# Measured rates (fp32, one H100, docs/PERFORMANCE.md): pretrain 7.7 img/s (batch 8), finetune 4.1–4.3 img/s
# (batch 4, encoder+decoder).
VIT_B_ENCODER = 89_670_912  # docs/MODEL.md (neck included: 0.79 M that pretraining leaves alone, < 1 %)
SAM_PROMPT_AND_MASK_DECODER = 6_220 + 4_058_340  # docs/MODEL.md


def mae_decoder_params(enc_dim=768, dim=512, depth=8, patch=16, target_ch=1):
    """The tensors pretrain/mae_decoder.c registers: norm_in, embed, mask_token, blocks, norm, pred."""
    block = (2 * dim + 3 * dim * dim + 3 * dim + dim * dim + dim    # norm1, attn.qkv, attn.proj
             + 2 * dim + 4 * dim * dim + 4 * dim + 4 * dim * dim + dim)  # norm2, mlp.fc1, mlp.fc2
    out = patch * patch * target_ch
    return 2 * enc_dim + dim * enc_dim + dim + dim + depth * block + 2 * dim + out * dim + out


WORKLOADS = [
    # name, FLOPs per image and step, trainable parameters, measured img/s on one H100
    ("pretrain: MAE vit_b @1024, mask 0.75, decoder 512×8", 3 * (191e9 + 485e9),
     VIT_B_ENCODER + mae_decoder_params(), 7.7),
    ("finetune: vit_b @1024, full, encoder+decoder", 3 * 972e9, VIT_B_ENCODER + SAM_PROMPT_AND_MASK_DECODER, 4.2),
]


# GPUs, interconnect, InfiniBand NICs per node of 8 (DGX H100 / HGX: one NDR NIC per GPU)
NETWORKS = [(1, "—", 8), (8, "NVLink", 8), (64, "NVLink + IB, 8 NICs/node", 8), (64, "NVLink + IB, 1 NIC/node", 1)]


def allreduce_s(nbytes, gpus, nvlink, ib, nics, per_node=8):
    """Ring all-reduce time per rank: 2(N−1)/N × bytes over the slowest hop; hierarchical past one node."""
    if gpus == 1:
        return 0.0
    if gpus <= per_node:
        return 2 * (gpus - 1) / gpus * nbytes / nvlink
    n, m = per_node, gpus // per_node
    intra = 2 * (n - 1) / n * nbytes / nvlink         # reduce-scatter + all-gather inside the node
    inter = 2 * (m - 1) / m * (nbytes / n) / (nics * ib / n)  # each GPU's 1/n over its share of the node's NICs
    return intra + inter


def main():
    head, rest = __doc__.split("\n\n", 1)
    ap = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fraction", type=float, default=0.40, help="achieved fraction of the bf16 peak (0.40)")
    ap.add_argument("--batches", default="8,32", help="per-rank batches, comma separated (8,32)")
    ap.add_argument("--nvlink", type=float, default=450, help="NVLink bus bandwidth per GPU, GB/s (450: NVLink 4)")
    ap.add_argument("--ib", type=float, default=50, help="InfiniBand per NIC, GB/s (50: NDR 400 Gb/s)")
    ap.add_argument("--bucket-mb", type=float, default=25, help="gradient bucket, MB (25)")
    a = ap.parse_args()
    nvlink, ib, bucket = a.nvlink * 1e9, a.ib * 1e9, a.bucket_mb * 1e6
    batches = [int(b) for b in a.batches.split(",")]
    print(f"H100 SXM, {PEAK / 1e12:.0f} TFLOP/s bf16 peak; NVLink {a.nvlink:g} GB/s, IB {a.ib:g} GB/s per NIC, "
          f"buckets {a.bucket_mb:g} MB, fp32 gradients, accumulation 1;\nscaling efficiency against one GPU at the "
          f"same per-rank batch (no overlap / overlap).")
    for name, flops, params, measured in WORKLOADS:
        grad = 4 * params
        print(f"\n**{name}**: {flops / 1e12:.2f} TFLOP per image, {params / 1e6:.1f} M parameters, "
              f"{grad / 1e6:.0f} MB all-reduced per step\n")
        print("| GPUs | batch/rank | of peak | interconnect | compute ms | all-reduce ms "
              "| step ms (no overlap / overlap) | img/s (no overlap / overlap) | efficiency |")
        print("|---|---|---|---|---|---|---|---|---|")
        measured_frac = measured * flops / PEAK
        for frac, label, bs, configs in [(a.fraction, f"{100 * a.fraction:.0f} %", batches, NETWORKS),
                                         (measured_frac, f"{100 * measured_frac:.1f} % (measured)", [8], NETWORKS[:3])]:
            for b in bs:
                compute = b * flops / (frac * PEAK)
                for gpus, net, nics in configs:
                    comm = allreduce_s(grad, gpus, nvlink, ib, nics)
                    last = comm * min(1.0, bucket / grad)
                    steps = (compute + comm, max(compute, compute / 3 + comm - last) + last)
                    ips = [gpus * b / t for t in steps]
                    eff = [compute / t for t in steps]
                    print(f"| {gpus} | {b} | {label} | {net} | {1e3 * compute:.1f} | {1e3 * comm:.2f} "
                          f"| {1e3 * steps[0]:.1f} / {1e3 * steps[1]:.1f} | {ips[0]:.0f} / {ips[1]:.0f} "
                          f"| {100 * eff[0]:.0f} % / {100 * eff[1]:.0f} % |")

if __name__ == "__main__":
    main()
