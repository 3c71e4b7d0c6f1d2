# tools/gpu/torch_bench.py — PyTorch timings of the shapes test_ops_cuda's bench times (same GPU, fp32):
# GEMM 4096x768x2304 and attention (dim 768, 12 heads, hd 64) at 25 windows x 196 tokens and 1 x 4096 tokens,
# with SAM's decomposed rel-pos done as segment_anything does it (materialised attn matrix, eager) and as
# plain SDPA without rel-pos. Prints "TORCH <label> <ms> ms <TFLOP/s>" lines. Run: python3 tools/gpu/torch_bench.py
import torch
import torch.nn.functional as F

dev = "cuda"
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def bench(fn, reps=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return min(ts)


def line(label, ms, flops):
    print(f"TORCH {label:<44s} {ms:9.3f} ms  {flops / (ms * 1e9):7.2f} TFLOP/s", flush=True)


x = torch.randn(4096, 768, device=dev)
w = torch.randn(2304, 768, device=dev)
fl = 2.0 * 4096 * 768 * 2304
line("linear fwd 4096x768 -> 2304 (fp32)", bench(lambda: F.linear(x, w)), fl)
torch.backends.cuda.matmul.allow_tf32 = True
line("linear fwd 4096x768 -> 2304 (tf32)", bench(lambda: F.linear(x, w)), fl)
torch.backends.cuda.matmul.allow_tf32 = False


def get_rel_pos(side, table):
    c = torch.arange(side, device=dev)
    return table[(c[:, None] - c[None, :]) + (side - 1)]  # (side, side, hd)


def sam_attn(q, k, v, th, tw, side):  # q,k,v (BH, N, hd) — segment_anything/modeling/image_encoder.py Attention
    BH, N, hd = q.shape
    attn = (q * hd ** -0.5) @ k.transpose(-2, -1)
    Rh, Rw = get_rel_pos(side, th), get_rel_pos(side, tw)
    r_q = q.reshape(BH, side, side, hd)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    attn = (attn.view(BH, side, side, side, side) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(BH, N, N)
    return attn.softmax(dim=-1) @ v


for G, side in ((25, 14), (1, 64)):
    N = side * side
    H, hd = 12, 64
    fl = 4.0 * G * H * N * N * hd
    q, k, v = (torch.randn(G * H, N, hd, device=dev, requires_grad=True) for _ in range(3))
    th = torch.randn(2 * side - 1, hd, device=dev, requires_grad=True)
    tw = torch.randn(2 * side - 1, hd, device=dev, requires_grad=True)
    g = torch.randn(G * H, N, hd, device=dev)
    with torch.no_grad():
        t_f = bench(lambda: sam_attn(q, k, v, th, tw, side))
    line(f"attention fwd {G}x{N} tok, relpos (SAM eager)", t_f, fl)
    t_fb = bench(lambda: sam_attn(q, k, v, th, tw, side).backward(g), reps=5)
    line(f"attention bwd {G}x{N} tok, relpos (SAM eager)", t_fb - t_f, 2.5 * fl)
    q4, k4, v4 = (t.detach().view(G, H, N, hd).requires_grad_() for t in (q, k, v))
    g4 = g.view(G, H, N, hd)
    with torch.no_grad():
        t_f = bench(lambda: F.scaled_dot_product_attention(q4, k4, v4))
    line(f"attention fwd {G}x{N} tok, no relpos (SDPA)", t_f, fl)
    t_fb = bench(lambda: F.scaled_dot_product_attention(q4, k4, v4).backward(g4), reps=5)
    line(f"attention bwd {G}x{N} tok, no relpos (SDPA)", t_fb - t_f, 2.5 * fl)
print("torch", torch.__version__, torch.cuda.get_device_name(), flush=True)
