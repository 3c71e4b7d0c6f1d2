"""tools/bench/finetune_ref.py — the PyTorch side of `mrisam bench finetune`: one finetune-SAM-style training step
(no prompts, num_cls output channels, Dice + CE, AdamW on the trainable set) of SAM built from tests/reference/
(sam_ref_encoder.py + sam_ref_decoder.py) with finetune-SAM's LoRA and adapters from peft_ref_encoder.py /
peft_ref_decoder.py (docs/MODEL.md §PEFT, docs/FINETUNE.md §What trains), for each method x scope asked; prints one JSON
line per case.

Trainable sets (mrisam's table, finetune/ft_model.c set_trainable; --compat gives finetune-SAM's own,
  with its encoder block):
  full    decoder: prompt encoder + mask decoder          encoder+decoder: everything
  lora    LoRA A/B (encoder blocks only with encoder+decoder; every decoder q/v proj) + the output heads
          (iou token, mask tokens, output upscaling, hypernetwork MLPs, IoU head); --compat adds the prompt encoder
  adapter adapters (encoder only with encoder+decoder) + the output heads; --compat: adapters only
With scope decoder the encoder runs under torch.no_grad(), as finetune-SAM does. PEFT tensors go on the encoder only
when it trains (mrisam builds them only then; finetune-SAM's would sit unused under no_grad). finetune-SAM's unused
Depth_Adapter is not built (mrisam has none).

vit_t / vit_t_test: the image encoder is MobileSAM's own TinyViT (tools/bench/tinyvit_torch.py; --upstream DIR or
MOBILESAM_DIR), method full only (finetune-SAM's TinyViT PEFT has no reference here). Its BatchNorms run in train
mode (batch statistics) when the encoder trains, else in eval mode, as mrisam runs them (--compat: train mode
always, as finetune-SAM).

Run with Debian's /usr/bin/python3 (torch 1.13, CPU); --device cuda on a GPU machine (float32; TF32 with MS_CUDA_TF32=1).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
import peft_ref_decoder as pe_dec  # noqa: E402
import peft_ref_encoder as pe_enc  # noqa: E402
import sam_ref_encoder as se  # noqa: E402
from sam_ref_decoder import MaskDecoder, PromptEncoder  # noqa: E402

sys.path.insert(0, HERE)
from tinyvit_torch import TinyViTEncoder  # noqa: E402

HEAD_KEYS = ("mask_decoder.iou_token.", "mask_decoder.mask_tokens.", "mask_decoder.output_upscaling.",
             "mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head.")


class FtSam(nn.Module):
    """SAM under its top-level key names, prompt-free multi-class head (num_cls + 1 mask tokens), with the PEFT of
    tests/reference/peft_ref_{encoder,decoder}.py: LoRA r on q/v of every encoder block and on every decoder q_proj /
    v_proj, or adapters (D/4, GELU) in every encoder block and both decoder layers; encoder PEFT only when
    peft_encoder."""

    def __init__(self, model, num_cls, method, peft_encoder, rank=4, finetune_sam_block=False, upstream=None):
        super().__init__()
        if model.startswith("vit_t") and model != "vit_test":
            if method != "full":
                sys.exit("finetune_ref.py: %s: method full only" % model)
            self.image_encoder = TinyViTEncoder(model, upstream)
            S = self.image_encoder.img_size
            g = S // 16
        else:
            self._vit(model, method, peft_encoder, rank, finetune_sam_block)
            S = se.VARIANTS[model]["img_size"]
            g = S // 16
        self.prompt_encoder = PromptEncoder(256, (g, g), S)
        self.mask_decoder = MaskDecoder(256, num_cls)
        if method != "full":
            pe_dec.add_peft(self.mask_decoder, rank if method == "lora" else 0, method == "adapter")
        self.img_size = S

    def _vit(self, model, method, peft_encoder, rank, finetune_sam_block):
        v = se.VARIANTS[model]
        if method != "full" and peft_encoder:
            cfg = dict(v, patch_size=16, window_size=14, out_chans=256)
            every = range(v["depth"])
            self.image_encoder = pe_enc.build(cfg, rank if method == "lora" else 0, every if method == "lora" else (),
                                              every if method == "adapter" else ())
        else:
            self.image_encoder = se.build(model)
        for b in self.image_encoder.blocks:
            b.finetune_sam = finetune_sam_block

    def decode(self, emb):
        sparse, dense = self.prompt_encoder(None, None, None)
        masks, _ = self.mask_decoder(emb, self.prompt_encoder.get_dense_pe(), sparse, dense, True)
        return masks


def trainable(name, method, scope, compat):
    if ".running_" in name or name.startswith(("image_encoder.m.norm_head.", "image_encoder.m.head.")):
        return False  # TinyViT: BatchNorm statistics are buffers; its classifier is unused by SAM
    enc = name.startswith("image_encoder.")
    pe = name.startswith("prompt_encoder.")
    head = any(name.startswith(h) for h in HEAD_KEYS)
    if method == "full":
        return scope == "encoder+decoder" or not enc
    if method == "lora":
        lora = any(s in name for s in (".linear_a_", ".linear_b_", ".w_a.", ".w_b."))
        return lora or head or (compat and pe)
    return "Adapter." in name or (not compat and head)


def seg_loss(logits, target, num_cls, smooth=1e-5):
    """finetune-SAM's loss: MONAI DiceLoss(sigmoid, squared_pred, one-hot target, background included) + CE."""
    p = torch.sigmoid(logits)
    y = F.one_hot(target, num_cls).permute(0, 3, 1, 2).to(p.dtype)
    inter = (p * y).sum((2, 3))
    den = (p * p).sum((2, 3)) + (y * y).sum((2, 3))
    dice = (1 - (2 * inter + smooth) / (den + smooth)).mean()
    return dice + F.cross_entropy(logits, target)


def bench_case(a, method, scope):
    torch.manual_seed(a.seed)
    enc_trains = scope == "encoder+decoder"
    m = FtSam(a.model, a.num_cls, method, enc_trains, a.lora_rank, a.compat, a.upstream).to(a.device)
    if not enc_trains and not a.compat:
        m.image_encoder.eval()  # TinyViT's frozen BatchNorms on running statistics (no effect on SAM's ViT)
    names = []
    for n, p in m.named_parameters():
        p.requires_grad_(trainable(n, method, scope, a.compat))
        if p.requires_grad:
            names.append((n, p.numel()))
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    S = m.img_size
    lo = 4 * (S // 16)
    gen = torch.Generator().manual_seed(a.seed)
    x = torch.randn(a.batch, 3, S, S, generator=gen)
    target = torch.randint(0, a.num_cls, (a.batch, lo, lo), generator=gen)
    x, target = x.to(a.device), target.to(a.device)

    def step():
        if enc_trains:
            emb = m.image_encoder(x)
        else:
            with torch.no_grad():
                emb = m.image_encoder(x)
        loss = seg_loss(m.decode(emb), target, a.num_cls)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()  # .item() waits for the device, so the host clock times the whole step

    times = []
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        step()
        if s >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out = {"impl": "torch", "method": method, "scope": scope, "model": a.model, "input": S, "batch": a.batch,
           "threads": a.threads, "device": a.device, "s_per_step": med, "slices_per_s": a.batch / med,
           "trainable": sum(k for _, k in names), "trainable_tensors": len(names), "torch": torch.__version__}
    if a.list_trainable:
        out["names"] = [n for n, _ in names]
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="full:decoder,full:encoder+decoder,lora:decoder,lora:encoder+decoder,"
                                       "adapter:decoder,adapter:encoder+decoder",
                    help="method:scope, comma-separated")
    ap.add_argument("--model", default="vit_test")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-cls", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compat", action="store_true",
                    help="finetune-SAM's trainable sets and encoder block (windows partitioned before norm1)")
    ap.add_argument("--upstream", default=os.environ.get("MOBILESAM_DIR"), help="MobileSAM checkout (vit_t)")
    ap.add_argument("--list-trainable", action="store_true", help="add the trainable tensor names to each line")
    ap.add_argument("--device", default="cpu",
                    help="cpu or cuda (float32; TF32 only with MS_CUDA_TF32=1, as for mrisam's CUDA backend)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.device.startswith("cuda"):
        # compare like with like: mrisam's CUDA GEMMs are exact fp32 unless MS_CUDA_TF32=1
        tf32 = os.environ.get("MS_CUDA_TF32") == "1"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    for c in a.cases.split(","):
        method, scope = c.split(":")
        bench_case(a, method, scope)


if __name__ == "__main__":
    main()
