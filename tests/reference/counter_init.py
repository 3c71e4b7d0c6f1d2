"""tests/reference/counter_init.py — the same deterministic weights as counter_init.c (keep the two in sync).

value[i] = center + scale * (2u - 1), u = (ms_rand_u64(stream, i) >> 40) / 2**24,
stream = ms_rng_stream(seed, fnv1a64(name), 0); see kernels/base/rng.h for ms_mix64 / ms_rng_stream / ms_rand_u64.
"""
import math
import numpy as np

M64 = (1 << 64) - 1


def mix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def mix64_np(x):
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def rng_stream(seed, a, b):
    return mix64(mix64(mix64(seed) ^ a) ^ ((b * 0xD1342543DE82EF95) & M64))


def rand_u64(stream, counter):
    """counter: numpy uint64 array."""
    with np.errstate(over="ignore"):
        return mix64_np(np.uint64(stream) ^ mix64_np(counter + np.uint64(0x632BE59BD9B4E019)))


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for ch in s.encode():
        h ^= ch
        h = (h * 0x100000001B3) & M64
    return h


def init_scale(name, shape):
    nd = len(shape)
    if nd == 1 and name.endswith(".weight"):
        return 1.0, 0.2
    if nd == 1:
        return 0.0, 0.1
    if "rel_pos" in name or "pos_embed" in name or "gaussian" in name:
        return 0.0, 0.5
    if "embed" in name or "token" in name:
        return 0.0, 1.0
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    if "output_upscaling" in name and nd == 4:
        fan_in = shape[1] * shape[2] * shape[3]
    return 0.0, float(np.float32(1.0 / math.sqrt(fan_in)))


def counter_init(name, shape, seed):
    """float32 numpy array of the given shape."""
    c, s = init_scale(name, tuple(shape))
    n = int(np.prod(shape)) if len(shape) else 1
    stream = rng_stream(seed, fnv1a64(name), 0)
    u = (rand_u64(stream, np.arange(n, dtype=np.uint64)) >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    v = np.float32(c) + np.float32(s) * (np.float32(2.0) * u - np.float32(1.0))
    return v.astype(np.float32).reshape(shape)
