/* tests/base/test_bf16.c — the bf16 conversion and rounding helpers (kernels/base/tensor.h) against a reference
 * that rounds in double arithmetic, with no bit tricks: |f| = m·2^e (frexp), the bf16 quantum at that exponent is
 * q = max(2^(e-8), 2^-133) (8 significant bits; below 2^-126 the fixed subnormal step), the two neighbours are
 * floor(|f|/q)·q and one q above, the nearer wins and a tie goes to the even multiple of q; a result of 2^128 or
 * more is inf. Inputs: every bf16 value with the low half of the fp32 pattern set to the interesting cases (0, 1,
 * just below / at / just above the half, all ones, random), random fp32 bit patterns (every class: zeros,
 * subnormals, normals, inf, NaN) and random floats of moderate size; then NaN, inf, overflow and tie cases spelt
 * out, the decoder against the IEEE formula, and the array helper against the scalar one.
 */
#include <math.h>
#include <string.h>

#include "base/tensor.h"
#include "harness.h"

static float f_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t u_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* The reference: f (finite) rounded to bf16 to nearest even, as a double (±inf on overflow). */
static double ref_round(float f)
{
    double a = fabs((double)f), r;
    if (a == 0) return (double)f; /* keeps the sign of zero */
    int e;
    (void)frexp(a, &e); /* a = m·2^e, m in [0.5, 1) */
    double q = ldexp(1.0, e - 8 > -133 ? e - 8 : -133);
    double lo = floor(a / q), rem = a - lo * q; /* exact: a / q and lo·q are exact in double */
    if (rem > q / 2 || (rem == q / 2 && fmod(lo, 2.0) == 1.0)) lo += 1;
    r = lo * q;
    if (r >= ldexp(1.0, 128)) r = INFINITY;
    return f < 0 ? -r : r;
}

/* The decoder against sign·mantissa·2^exponent. */
static double ref_decode(uint16_t h)
{
    int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
    double v;
    if (e == 255) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp((double)m, -133);
    else v = ldexp(128.0 + m, e - 134);
    return s ? -v : v;
}

static int bad_shown;
/* One input: the helper's result must be the reference's float, bit for bit (sign of zero included). */
static int check_one(float f)
{
    uint32_t u = u_of(f);
    uint16_t h = ms_f32_to_bf16(f);
    int ok;
    if (isnan(f)) /* a NaN stays a NaN of the same sign, quiet bit set */
        ok = (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0 && (h & 0x40) && (h >> 15) == (u >> 31);
    else {
        double r = ref_round(f);
        float want = (float)r; /* exact: r has at most 8 significant bits, or is inf */
        ok = h == (uint16_t)(u_of(want) >> 16) && (u_of(want) & 0xffff) == 0;
        ok = ok && u_of(ms_bf16_round(f)) == u_of(want);
    }
    if (!ok && bad_shown++ < 10)
        printf("  bad: f=%.9g (0x%08x) -> 0x%04x, reference %.9g\n", (double)f, u, h,
               isnan(f) ? (double)f : ref_round(f));
    return !ok;
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng r;
    ms_rng_init(&r, seed, 1);

    /* every bf16 pattern as the upper half, the lower half at the edges of rounding */
    int bad = 0;
    for (uint32_t hi = 0; hi < 65536; hi++) {
        uint32_t lows[7] = {0, 1, 0x7fff, 0x8000, 0x8001, 0xffff, (uint32_t)(ms_rng_u64(&r) & 0xffff)};
        for (int k = 0; k < 7; k++) bad += check_one(f_of(hi << 16 | lows[k]));
    }
    MS_CHECK(bad == 0, "every bf16 value x 7 low halves: %d wrong", bad);

    /* random bit patterns (all classes) and random moderate floats */
    bad = 0;
    for (int i = 0; i < 2000000; i++) bad += check_one(f_of((uint32_t)ms_rng_u64(&r)));
    for (int i = 0; i < 1000000; i++) bad += check_one(ms_rng_range(&r, -3.f, 3.f) * (i % 2 ? 1e-3f : 1.f));
    MS_CHECK(bad == 0, "random fp32 patterns and floats: %d wrong", bad);

    /* spelt out: ties to even, carries into the exponent, overflow, inf, NaN, subnormals, zeros */
    MS_CHECK(ms_f32_to_bf16(f_of(0x3f808000u)) == 0x3f80, "tie 1+2^-8 rounds down to even 1.0");
    MS_CHECK(ms_f32_to_bf16(f_of(0x3f818000u)) == 0x3f82, "tie 1+3·2^-8 rounds up to even");
    MS_CHECK(ms_f32_to_bf16(f_of(0x3fff8000u)) == 0x4000, "tie at the top of a binade carries into the exponent");
    MS_CHECK(ms_f32_to_bf16(f_of(0x3f808001u)) == 0x3f81, "just above a tie rounds up");
    MS_CHECK(ms_f32_to_bf16(3.4028235e38f) == 0x7f80, "max finite fp32 overflows to +inf");
    MS_CHECK(ms_f32_to_bf16(-3.4028235e38f) == 0xff80, "-max finite fp32 overflows to -inf");
    MS_CHECK(ms_f32_to_bf16(f_of(0x7f7f7fffu)) == 0x7f7f, "just below the overflow tie stays at max bf16");
    MS_CHECK(ms_f32_to_bf16(f_of(0x7f7f8000u)) == 0x7f80, "the overflow tie (odd max bf16) goes to inf");
    MS_CHECK(ms_f32_to_bf16(INFINITY) == 0x7f80 && ms_f32_to_bf16(-INFINITY) == 0xff80, "±inf kept");
    MS_CHECK(ms_f32_to_bf16(f_of(0x7f800001u)) == 0x7fc0, "signalling NaN with low mantissa bits only -> quiet NaN");
    MS_CHECK(ms_f32_to_bf16(f_of(0xffc00000u)) == 0xffc0, "negative quiet NaN kept");
    MS_CHECK(isnan(ms_bf16_round(NAN)), "ms_bf16_round(NaN) is NaN");
    MS_CHECK(ms_f32_to_bf16(f_of(0x00000001u)) == 0x0000, "the smallest fp32 subnormal rounds to +0");
    MS_CHECK(ms_f32_to_bf16(f_of(0x80000001u)) == 0x8000, "... and its negative to -0");
    MS_CHECK(ms_f32_to_bf16(f_of(0x00008000u)) == 0x0000, "tie at half the smallest bf16 subnormal goes to even 0");
    MS_CHECK(ms_f32_to_bf16(f_of(0x00018000u)) == 0x0002, "subnormal tie rounds up to even");
    MS_CHECK(ms_f32_to_bf16(f_of(0x007fffffu)) == 0x0080, "largest fp32 subnormal rounds up to the smallest normal");

    /* the decoder: all 65536 patterns against the IEEE formula */
    bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float v = ms_bf16_to_f32((uint16_t)h);
        double want = ref_decode((uint16_t)h);
        if (isnan(want) ? !isnan(v) : (double)v != want || !signbit(v) != !signbit(want)) bad++;
    }
    MS_CHECK(bad == 0, "decoder: %d of 65536 patterns wrong", bad);

    /* the array helper: out of place and in place equal the scalar rounding */
    enum { N = 100003 };
    static float src[N], dst[N];
    for (int i = 0; i < N; i++) src[i] = i % 5 ? ms_rng_range(&r, -100.f, 100.f) : f_of((uint32_t)ms_rng_u64(&r));
    ms_bf16_round_copy(dst, src, N);
    bad = 0;
    for (int i = 0; i < N; i++) bad += u_of(dst[i]) != u_of(ms_bf16_round(src[i])) && !(isnan(dst[i]) && isnan(src[i]));
    ms_bf16_round_copy(src, src, N);
    for (int i = 0; i < N; i++) bad += u_of(dst[i]) != u_of(src[i]);
    MS_CHECK(bad == 0, "ms_bf16_round_copy: %d elements differ from ms_bf16_round", bad);
    return ms_test_done();
}
