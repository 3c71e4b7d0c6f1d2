#!/usr/bin/python3
"""tools/bench/bench_ops_torch.py — the PyTorch side of `mrisam bench ops` (run with /usr/bin/python3).

Times, for each thread count, the same shapes as tools/bench_ops.c:
  gemm_qkv  x(4096,768) @ W(2304,768)ᵀ      gemm_mlp  x(4096,768) @ W(3072,768)ᵀ
  attn_win  SAM ViT-B windowed attention: 25 windows of 14x14 tokens, dim 768, 12 heads, rel-pos tables (27,64)
  attn_glob SAM ViT-B global attention: 1 image of 64x64 tokens, rel-pos tables (127,64)
The attention is segment_anything's Attention.forward from the qkv projection's output to the input of the
output projection (reshape/permute, (q·scale)@kᵀ, add_decomposed_rel_pos with get_rel_pos exactly as
segment_anything/modeling/image_encoder.py does it, softmax, @v, permute back); "fb" also runs backward into
qkv and both tables. Prints one line per measurement: "<name> <fwd|fb> <threads> <best seconds> <median s>".
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def get_rel_pos(q_size, k_size, rel_pos):
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos_resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
                                        size=max_rel_dist, mode="linear")
        rel_pos_resized = rel_pos_resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        rel_pos_resized = rel_pos
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos_resized[relative_coords.long()]


def add_decomposed_rel_pos(attn, q, rel_pos_h, rel_pos_w, q_size, k_size):
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w)
    B, _, dim = q.shape
    r_q = q.reshape(B, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    attn = (attn.view(B, q_h, q_w, k_h, k_w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(
        B, q_h * q_w, k_h * k_w)
    return attn


def sam_attention(qkv_out, rel_pos_h, rel_pos_w, num_heads, H, W):
    """Attention.forward of segment_anything without the qkv and proj linears; qkv_out is (B, H, W, 3·dim)."""
    B = qkv_out.shape[0]
    dim = qkv_out.shape[-1] // 3
    scale = (dim // num_heads) ** -0.5
    qkv = qkv_out.reshape(B, H * W, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, B * num_heads, H * W, -1).unbind(0)
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = add_decomposed_rel_pos(attn, q, rel_pos_h, rel_pos_w, (H, W), (H, W))
    attn = attn.softmax(dim=-1)
    x = (attn @ v).view(B, num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
    return x


def timeit(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--global-repeats", type=int, default=2)
    ap.add_argument("--skip-global", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    D, heads = 768, 12
    hd = D // heads
    x = torch.randn(4096, D)
    w_qkv, w_mlp = torch.randn(3 * D, D) * 0.03, torch.randn(4 * D, D) * 0.03
    cases = [("attn_win", 25, 14, a.repeats)]
    if not a.skip_global:
        cases.append(("attn_glob", 1, 64, a.global_repeats))
    for n in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(n)
        with torch.no_grad():
            for name, w in (("gemm_qkv", w_qkv), ("gemm_mlp", w_mlp)):
                best, med = timeit(lambda: x @ w.t(), a.repeats)
                print("%s fwd %d %.6f %.6f" % (name, n, best, med), flush=True)
        for name, B, S, reps in cases:
            qkv = (torch.randn(B, S, S, 3 * D) * 0.5).requires_grad_(True)
            rh = (torch.randn(2 * S - 1, hd) * 0.1).requires_grad_(True)
            rw = (torch.randn(2 * S - 1, hd) * 0.1).requires_grad_(True)
            g = torch.randn(B, S, S, D)
            with torch.no_grad():
                best, med = timeit(lambda: sam_attention(qkv, rh, rw, heads, S, S), reps)
            print("%s fwd %d %.6f %.6f" % (name, n, best, med), flush=True)

            def fb():
                qkv.grad = rh.grad = rw.grad = None
                sam_attention(qkv, rh, rw, heads, S, S).backward(g)
            best, med = timeit(fb, reps)
            print("%s fb %d %.6f %.6f" % (name, n, best, med), flush=True)


if __name__ == "__main__":
    main()
