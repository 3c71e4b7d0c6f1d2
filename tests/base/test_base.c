/* tests/base/test_base.c — status messages, f16/bf16 conversion, counter RNG, arena. */
#include <string.h>

#include "base/status.h"
#include "base/tensor.h"
#include "harness.h"

static ms_status fails(const char *path) { MS_FAIL(MS_EFORMAT, "%s: bad magic", path); }

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_status st = fails("x.pth");
    MS_CHECK(st == MS_EFORMAT && !strcmp(ms_errmsg(), "x.pth: bad magic"), "message: %s", ms_errmsg());
    ms_error_prefix("load");
    MS_CHECK(!strcmp(ms_errmsg(), "load: x.pth: bad magic"), "prefix: %s", ms_errmsg());

    /* f16/bf16 round trips against exactly representable values and rounding of random floats */
    ms_rng r;
    ms_rng_init(&r, seed, 1);
    int bad16 = 0, badbf = 0;
    for (int i = 0; i < 100000; i++) {
        float f = ms_rng_range(&r, -70000.f, 70000.f) * (i % 3 ? 1e-3f : 1.f);
        float h = ms_f16_to_f32(ms_f32_to_f16(f));
        if (fabsf(f) < 65504.f && fabsf(h - f) > fabsf(f) * (1.f / 2048.f) + 6e-8f) bad16++;
        float b = ms_bf16_to_f32(ms_f32_to_bf16(f));
        if (fabsf(b - f) > fabsf(f) * (1.f / 256.f)) badbf++;
    }
    MS_CHECK(bad16 == 0, "f16 rounding errors: %d", bad16);
    MS_CHECK(badbf == 0, "bf16 rounding errors: %d", badbf);
    MS_CHECK(ms_f16_to_f32(0x3c00) == 1.0f && ms_f16_to_f32(0xc000) == -2.0f, "f16 constants");

    /* counter RNG: pure function of (stream, counter); uniform mean ~0.5 */
    ms_rng a, b;
    ms_rng_init(&a, seed, 7);
    ms_rng_init(&b, seed, 7);
    double mean = 0;
    int same = 1;
    for (int i = 0; i < 100000; i++) {
        float u = ms_rng_uniform(&a);
        same &= u == ms_rng_uniform(&b);
        mean += u;
    }
    mean /= 100000;
    MS_CHECK(same, "rng not reproducible");
    MS_CHECK(fabs(mean - 0.5) < 0.01, "uniform mean %f", mean);

    ms_device dev = {0};
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 1));
    ms_arena ar = {0};
    size_t o1 = ms_arena_reserve(&ar, 10), o2 = ms_arena_reserve(&ar, 100);
    MS_CHECK(o1 == 0 && o2 == 64 && ar.used == 192, "arena offsets %zu %zu %zu", o1, o2, ar.used);
    MS_CHECK_OK(ms_arena_alloc(&ar, &dev, 1));
    MS_CHECK(((float *)ms_arena_ptr(&ar, o2))[0] == 0.f, "arena zeroed");
    ms_arena_free(&ar);
    ms_device cuda = {0};
    if (!ms_cuda_available()) MS_CHECK(ms_device_init(&cuda, MS_DEV_CUDA, 1) == MS_EDEVICE, "no-cuda init fails cleanly");
    return ms_test_done();
}
