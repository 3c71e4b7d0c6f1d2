#!/usr/bin/python3
"""tests/kernels/gen_golden_resize.py — PyTorch reference values for test_ops_b: the resize ops, and SAM's
encoder attention with decomposed relative positions (segment_anything's code) on a small non-square case.

Run with Debian's python3-torch:  /usr/bin/python3 tests/kernels/gen_golden_resize.py tests/kernels/golden
(writes resize.txt and sam_attention.txt there). Inputs are not stored: element i of an input is
float32(sin(a·i + b) + c·cos(d·i + e)) with the constants below, which the C test recomputes. Each case is one
header line "<kind> <dims...> <count>" followed by the torch values (%.9g), 8 per line:
  rel_pos L_in C L_out      get_rel_pos's F.interpolate(rel.T[None], size=L_out, mode="linear")[0].T
  bilinear NC Hin Win Hout Wout  /  bicubic NC Hin Win Hout Wout   (align_corners=False, no antialias)
  sam_attention: out, dqkv, drel_h, drel_w blocks (see attention_case).
"""
import math
import os
import sys

import torch
import torch.nn.functional as F


def inputs(n, a=0.37, b=0.0, c=0.5, d=1.3, e=0.2):
    return torch.tensor([math.sin(a * i + b) + c * math.cos(d * i + e) for i in range(n)], dtype=torch.float32)


def emit(f, header, out):
    vals = out.detach().contiguous().view(-1).tolist()
    print(header, len(vals), file=f)
    for i in range(0, len(vals), 8):
        print(" ".join("%.9g" % v for v in vals[i:i + 8]), file=f)


def get_rel_pos(q_size, k_size, rel_pos):
    """segment_anything/modeling/image_encoder.py get_rel_pos."""
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
    """segment_anything/modeling/image_encoder.py add_decomposed_rel_pos."""
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w)
    B, _, dim = q.shape
    r_q = q.reshape(B, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    return (attn.view(B, q_h, q_w, k_h, k_w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(
        B, q_h * q_w, k_h * k_w)


def attention_case(f):
    """Attention.forward from the qkv output to the proj input: B'=2 windows of H=3 x W=5 tokens, 2 heads of
    dim 4 (D=8), tables (5,4) and (9,4). Inputs: qkv (2,3,5,24) = inputs(n, 0.37,0,0.5,1.3,0.2),
    rel_h = 0.3·inputs(20, 0.91,0.5,0,..), rel_w = 0.3·inputs(36, 0.53,1.0,0,..), upstream grad g (2,3,5,8) =
    inputs(240, 0.71,0.3,0.25,2.1,0.4). Header "sam_attention 2 3 5 2 4 <count>", then out, dqkv, drel_h, drel_w."""
    Bw, H, W, heads, hd = 2, 3, 5, 2, 4
    D = heads * hd
    qkv_out = inputs(Bw * H * W * 3 * D).view(Bw, H, W, 3 * D).requires_grad_(True)
    rel_h = (0.3 * inputs((2 * H - 1) * hd, 0.91, 0.5, 0.0)).view(2 * H - 1, hd).requires_grad_(True)
    rel_w = (0.3 * inputs((2 * W - 1) * hd, 0.53, 1.0, 0.0)).view(2 * W - 1, hd).requires_grad_(True)
    g = inputs(Bw * H * W * D, 0.71, 0.3, 0.25, 2.1, 0.4).view(Bw, H, W, D)
    scale = hd ** -0.5
    qkv = qkv_out.reshape(Bw, H * W, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, Bw * heads, H * W, -1).unbind(0)
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = add_decomposed_rel_pos(attn, q, rel_h, rel_w, (H, W), (H, W))
    attn = attn.softmax(dim=-1)
    x = (attn @ v).view(Bw, heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(Bw, H, W, -1)
    x.backward(g)
    vals = torch.cat([x.reshape(-1), qkv_out.grad.reshape(-1), rel_h.grad.reshape(-1), rel_w.grad.reshape(-1)])
    emit(f, "sam_attention %d %d %d %d %d" % (Bw, H, W, heads, hd), vals)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "golden")
    with open(os.path.join(out_dir, "resize.txt"), "w") as f:
        for L_in, C, L_out in [(7, 4, 13), (27, 3, 11), (5, 2, 5)]:
            rel = inputs(L_in * C).view(L_in, C)
            out = F.interpolate(rel.T[None], size=L_out, mode="linear")[0].T
            emit(f, "rel_pos %d %d %d" % (L_in, C, L_out), out)
        for mode in ["bilinear", "bicubic"]:
            for NC, Hin, Win, Hout, Wout in [(2, 5, 7, 9, 4), (1, 6, 6, 13, 11), (3, 7, 7, 4, 3), (1, 4, 5, 4, 5)]:
                x = inputs(NC * Hin * Win).view(1, NC, Hin, Win)
                y = F.interpolate(x, size=(Hout, Wout), mode=mode, align_corners=False)
                emit(f, "%s %d %d %d %d %d" % (mode, NC, Hin, Win, Hout, Wout), y)
    with open(os.path.join(out_dir, "sam_attention.txt"), "w") as f:
        attention_case(f)


if __name__ == "__main__":
    main()
