/* necklace native kernels: the GEMMs of 1x1 convs and of Winograd's channel mixing, float32, with the conv's
 * epilogue (bias, the sum into an existing map, ReLU / SiLU) applied while the output tile is in registers.
 *
 * Built together with kernels.c by necklace/deploy/native/loader.py. Plain functions on raw pointers, strides
 * counted in floats.
 *
 * out[m, n] = act(init[m, n] + sum_q sum_k A_q[m, k] * B[k_q0 + k, n])
 *
 * - A is one or more parts (the maps of a concatenation that is never built): element (m, k) of part q is
 *   a_q[m * sm_q + k * sk_q]; a channels_last map is (pixels, channels) with sk = 1, an NCHW one sk = H * W.
 * - B (K, N) is packed once by the caller into panels of NR = 16 columns: bp[(j * K + k) * 16 + c] = B[k, 16 j + c]
 *   (zeros past N), so the kernel streams one panel of K x 16 values from L1.
 * - init: the bias (broadcast over rows; zero when NULL), or a map read row by row: out itself (a sum into it), or
 *   a low-resolution map whose nearest upsampling by integer factors is the map to add (never written out).
 * - act: 0 none, 1 ReLU, 2 SiLU (x / (1 + exp(-x)), torch's formula; exp by a degree-5 polynomial on the
 *   range-reduced argument, within 2 ulp of expf; NaN and infinities come out as torch's do).
 *
 * The micro-kernel holds a 6 x 16 output tile in 12 AVX registers (AVX2 + FMA where the compiler targets them, a
 * scalar loop elsewhere) and runs the whole K of every part into it, so out is written exactly once.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define NK_AVX2 1
#endif

#if defined(NK_AVX2) && defined(__AVX512F__) && defined(__AVX512DQ__)
#define NK_AVX512 1
#endif

#define NR 16
#define MR 6
#define NK_MAX_PARTS 8

typedef struct {
    const float *a;
    long sm, sk, k;
} nk_part;

/* where row m of the initial values is: src + ld * (m, or the pixel of the (lh, lw) map that row m's pixel of the
 * (hh, hw) map is a nearest upsampling of, by the integer factors hh / lh and hw / lw); src NULL: the bias */
typedef struct {
    const float *src;
    long ld, lh, lw, hh, hw;
} nk_init;

static inline const float *init_row(const nk_init *in, long m) {
    if (in->lh == in->hh && in->lw == in->hw) return in->src + m * in->ld;
    long hw = in->hh * in->hw, img = m / hw, rem = m % hw, y = rem / in->hw, x = rem % in->hw;
    return in->src + ((img * in->lh + y / (in->hh / in->lh)) * in->lw + x / (in->hw / in->lw)) * in->ld;
}

/* the activation of one value, as torch computes it */
static inline float act1(float v, int act) {
    if (act == 1) return v < 0.f ? 0.f : v; /* NaN stays NaN */
    if (act == 2) return v / (1.f + expf(-v));
    return v;
}

#ifdef NK_AVX2
/* exp(x) for 8 floats: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by its Taylor polynomial (degree 5 plus the exact
 * 1 + r), times 2^n built in the exponent bits. x is first clamped to [-87.34, 88.72] (NaN stays NaN: min / max
 * return their second operand when one is NaN): below, the result is 2^-126 instead of a denormal or 0; from
 * 88.38 up it is +inf (n = 128), where expf overflows from 88.72. Within 2 ulp of expf in between. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.3365479f), _mm256_min_ps(_mm256_set1_ps(88.7228317f), x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    /* 1 + r + r^2 (c2 + c3 r + r^2 (c4 + c5 r + r^2 (c6 + c7 r))): pairs first (Estrin), a shorter dependency chain
     * than Horner's, so the SiLUs of a tile's rows overlap */
    __m256 r2 = _mm256_mul_ps(r, r);
    __m256 p67 = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
    __m256 p45 = _mm256_fmadd_ps(_mm256_set1_ps(8.3334519073e-3f), r, _mm256_set1_ps(4.1665795894e-2f));
    __m256 p23 = _mm256_fmadd_ps(_mm256_set1_ps(1.6666665459e-1f), r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 p = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_fmadd_ps(p67, r2, p45), r2, p23), r2, _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline __m256 act8(__m256 v, int act) {
    if (act == 1) return _mm256_max_ps(_mm256_setzero_ps(), v); /* (NaN: max returns its second operand, v) */
    if (act == 2) /* v / (1 + exp(-v)), torch's formula: -0 for v < -88.38, NaN for -inf (-inf / inf) */
        return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), v))));
    return v;
}
#endif

#ifdef NK_AVX512
/* exp8's arithmetic on 16 floats, 2^n applied by scalef: finite up to 88.72 and +inf above, as expf (x is clamped
 * to [-87.34, 89], where 2^128 times the polynomial overflows) */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-87.3365479f), _mm512_min_ps(_mm512_set1_ps(89.f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 r2 = _mm512_mul_ps(r, r);
    __m512 p67 = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    __m512 p45 = _mm512_fmadd_ps(_mm512_set1_ps(8.3334519073e-3f), r, _mm512_set1_ps(4.1665795894e-2f));
    __m512 p23 = _mm512_fmadd_ps(_mm512_set1_ps(1.6666665459e-1f), r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 p = _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_fmadd_ps(p67, r2, p45), r2, p23), r2, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 silu16(__m512 v) {
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))));
}
#endif

#ifdef NK_AVX2
/* act8 of two vectors (a tile row's 16 columns): one 16-wide SiLU where AVX-512 is there */
static inline void act16(__m256 x0, __m256 x1, int act, __m256 *v0, __m256 *v1) {
#ifdef NK_AVX512
    if (act == 2) {
        __m512 y = silu16(_mm512_insertf32x8(_mm512_castps256_ps512(x0), x1, 1));
        *v0 = _mm512_castps512_ps256(y);
        *v1 = _mm512_extractf32x8_ps(y, 1);
        return;
    }
#endif
    *v0 = act8(x0, act);
    *v1 = act8(x1, act);
}
#endif

/* apply act to n contiguous floats in place (also the Winograd output transform's, kernels.c) */
void nk_act_run(float *v, int n, int act) {
    int i = 0;
#ifdef NK_AVX512
    if (act == 2)
        for (; i + 32 <= n; i += 32) { /* two independent vectors a step, as below */
            __m512 a = silu16(_mm512_loadu_ps(v + i)), b = silu16(_mm512_loadu_ps(v + i + 16));
            _mm512_storeu_ps(v + i, a);
            _mm512_storeu_ps(v + i + 16, b);
        }
    if (act == 2)
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(v + i, silu16(_mm512_loadu_ps(v + i)));
#endif
#ifdef NK_AVX2
    for (; i + 16 <= n; i += 16) { /* two independent vectors a step: the exp's dependency chains overlap */
        __m256 a = act8(_mm256_loadu_ps(v + i), act), b = act8(_mm256_loadu_ps(v + i + 8), act);
        _mm256_storeu_ps(v + i, a);
        _mm256_storeu_ps(v + i + 8, b);
    }
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, act8(_mm256_loadu_ps(v + i), act));
#endif
    for (; i < n; i++) v[i] = act1(v[i], act);
}

#ifdef NK_AVX2
/* a tile of mr <= 6 rows and nc <= 16 columns: the start from the bias or the initial map's rows, the loop over every
 * part's k, the activation and the stores in one function, so the accumulators never leave the registers */
static __attribute__((noinline)) void tile_one(const nk_part *parts, int nparts, long m0, int mr, const float *bp,
                                               const float *bias, const float *const *irow, float *o, long ldo,
                                               int nc, int act) {
    /* columns past nc (a last panel of fewer than 16 output channels) are never read nor written: masked moves */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0k = _mm256_cmpgt_epi32(_mm256_set1_epi32(nc), lane);
    const __m256i m1k = _mm256_cmpgt_epi32(_mm256_set1_epi32(nc - 8), lane);
#define NK_LD(p, x0, x1)                                                                                         \
    {                                                                                                            \
        if (nc == NR) {                                                                                          \
            x0 = _mm256_loadu_ps(p), x1 = _mm256_loadu_ps((p) + 8);                                              \
        } else {                                                                                                 \
            x0 = _mm256_maskload_ps(p, m0k), x1 = _mm256_maskload_ps((p) + 8, m1k);                               \
        }                                                                                                        \
    }
    __m256 z0 = _mm256_setzero_ps(), z1 = _mm256_setzero_ps();
    if (bias != NULL) NK_LD(bias, z0, z1)
    __m256 c00 = z0, c01 = z1, c10 = z0, c11 = z1, c20 = z0, c21 = z1;
    __m256 c30 = z0, c31 = z1, c40 = z0, c41 = z1, c50 = z0, c51 = z1;
    if (irow != NULL) { /* the initial map's rows instead (the bias is then NULL; rows past mr start at 0) */
        NK_LD(irow[0], c00, c01)
        if (mr > 1) NK_LD(irow[1], c10, c11)
        if (mr > 2) NK_LD(irow[2], c20, c21)
        if (mr > 3) NK_LD(irow[3], c30, c31)
        if (mr > 4) NK_LD(irow[4], c40, c41)
        if (mr > 5) NK_LD(irow[5], c50, c51)
    }
#undef NK_LD
    for (int q = 0; q < nparts; q++) {
        long sm = parts[q].sm, sk = parts[q].sk, kk = parts[q].k;
        /* rows past mr read row 0 again (their results are never stored) */
        const float *a0 = parts[q].a + m0 * sm, *a1 = a0 + (mr > 1 ? sm : 0), *a2 = a0 + (mr > 2 ? 2 * sm : 0);
        const float *a3 = a0 + (mr > 3 ? 3 * sm : 0), *a4 = a0 + (mr > 4 ? 4 * sm : 0), *a5 = a0 + (mr > 5 ? 5 * sm : 0);
        for (long k = 0, off = 0; k < kk; k++, off += sk, bp += NR) {
            __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8), av;
            av = _mm256_broadcast_ss(a0 + off);
            c00 = _mm256_fmadd_ps(av, b0, c00);
            c01 = _mm256_fmadd_ps(av, b1, c01);
            av = _mm256_broadcast_ss(a1 + off);
            c10 = _mm256_fmadd_ps(av, b0, c10);
            c11 = _mm256_fmadd_ps(av, b1, c11);
            av = _mm256_broadcast_ss(a2 + off);
            c20 = _mm256_fmadd_ps(av, b0, c20);
            c21 = _mm256_fmadd_ps(av, b1, c21);
            av = _mm256_broadcast_ss(a3 + off);
            c30 = _mm256_fmadd_ps(av, b0, c30);
            c31 = _mm256_fmadd_ps(av, b1, c31);
            av = _mm256_broadcast_ss(a4 + off);
            c40 = _mm256_fmadd_ps(av, b0, c40);
            c41 = _mm256_fmadd_ps(av, b1, c41);
            av = _mm256_broadcast_ss(a5 + off);
            c50 = _mm256_fmadd_ps(av, b0, c50);
            c51 = _mm256_fmadd_ps(av, b1, c51);
        }
    }
#define NK_STORE1(r, x0, x1)                                                                                     \
    if ((r) < mr) {                                                                                              \
        __m256 v0, v1;                                                                                           \
        act16(x0, x1, act, &v0, &v1);                                                                            \
        if (nc == NR) {                                                                                          \
            _mm256_storeu_ps(o + (r) * ldo, v0);                                                                 \
            _mm256_storeu_ps(o + (r) * ldo + 8, v1);                                                             \
        } else {                                                                                                 \
            _mm256_maskstore_ps(o + (r) * ldo, m0k, v0);                                                         \
            _mm256_maskstore_ps(o + (r) * ldo + 8, m1k, v1);                                                     \
        }                                                                                                        \
    }
    NK_STORE1(0, c00, c01) NK_STORE1(1, c10, c11) NK_STORE1(2, c20, c21)
    NK_STORE1(3, c30, c31) NK_STORE1(4, c40, c41) NK_STORE1(5, c50, c51)
#undef NK_STORE1
}
#endif

#ifdef NK_AVX512
/* tile_one for 32 columns (two adjacent panels, read side by side) in twelve 512-bit registers: half the FMA
 * instructions and broadcasts per multiply-add of two 16-column tiles */
static __attribute__((noinline)) void tile_two(const nk_part *parts, int nparts, long m0, int mr, const float *bp,
                                               long pstride, const float *bias, const float *const *irow, float *o,
                                               long ldo, int act) {
    __m512 z0 = bias != NULL ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    __m512 z1 = bias != NULL ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
    __m512 c00 = z0, c01 = z1, c10 = z0, c11 = z1, c20 = z0, c21 = z1;
    __m512 c30 = z0, c31 = z1, c40 = z0, c41 = z1, c50 = z0, c51 = z1;
    if (irow != NULL) {
        c00 = _mm512_loadu_ps(irow[0]), c01 = _mm512_loadu_ps(irow[0] + 16);
        if (mr > 1) c10 = _mm512_loadu_ps(irow[1]), c11 = _mm512_loadu_ps(irow[1] + 16);
        if (mr > 2) c20 = _mm512_loadu_ps(irow[2]), c21 = _mm512_loadu_ps(irow[2] + 16);
        if (mr > 3) c30 = _mm512_loadu_ps(irow[3]), c31 = _mm512_loadu_ps(irow[3] + 16);
        if (mr > 4) c40 = _mm512_loadu_ps(irow[4]), c41 = _mm512_loadu_ps(irow[4] + 16);
        if (mr > 5) c50 = _mm512_loadu_ps(irow[5]), c51 = _mm512_loadu_ps(irow[5] + 16);
    }
    const float *bq = bp + pstride;
    for (int q = 0; q < nparts; q++) {
        long sm = parts[q].sm, sk = parts[q].sk, kk = parts[q].k;
        const float *a0 = parts[q].a + m0 * sm, *a1 = a0 + (mr > 1 ? sm : 0), *a2 = a0 + (mr > 2 ? 2 * sm : 0);
        const float *a3 = a0 + (mr > 3 ? 3 * sm : 0), *a4 = a0 + (mr > 4 ? 4 * sm : 0), *a5 = a0 + (mr > 5 ? 5 * sm : 0);
        for (long k = 0, off = 0; k < kk; k++, off += sk, bp += NR, bq += NR) {
            __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bq), av;
            av = _mm512_set1_ps(a0[off]);
            c00 = _mm512_fmadd_ps(av, b0, c00);
            c01 = _mm512_fmadd_ps(av, b1, c01);
            av = _mm512_set1_ps(a1[off]);
            c10 = _mm512_fmadd_ps(av, b0, c10);
            c11 = _mm512_fmadd_ps(av, b1, c11);
            av = _mm512_set1_ps(a2[off]);
            c20 = _mm512_fmadd_ps(av, b0, c20);
            c21 = _mm512_fmadd_ps(av, b1, c21);
            av = _mm512_set1_ps(a3[off]);
            c30 = _mm512_fmadd_ps(av, b0, c30);
            c31 = _mm512_fmadd_ps(av, b1, c31);
            av = _mm512_set1_ps(a4[off]);
            c40 = _mm512_fmadd_ps(av, b0, c40);
            c41 = _mm512_fmadd_ps(av, b1, c41);
            av = _mm512_set1_ps(a5[off]);
            c50 = _mm512_fmadd_ps(av, b0, c50);
            c51 = _mm512_fmadd_ps(av, b1, c51);
        }
    }
#define NK_STORE2(r, x0, x1)                                                                                     \
    if ((r) < mr) {                                                                                              \
        _mm512_storeu_ps(o + (r) * ldo, act == 2 ? silu16(x0) : act == 1 ? _mm512_max_ps(_mm512_setzero_ps(), x0) : x0); \
        _mm512_storeu_ps(o + (r) * ldo + 16, act == 2 ? silu16(x1) : act == 1 ? _mm512_max_ps(_mm512_setzero_ps(), x1) : x1); \
    }
    NK_STORE2(0, c00, c01) NK_STORE2(1, c10, c11) NK_STORE2(2, c20, c21)
    NK_STORE2(3, c30, c31) NK_STORE2(4, c40, c41) NK_STORE2(5, c50, c51)
#undef NK_STORE2
}
#endif

#ifndef NK_AVX2
/* one tile without AVX2 (tile_one's arithmetic as plain loops): rows m0 .. m0 + mr - 1 (mr <= MR) and columns
 * n0 .. n0 + nc - 1 (nc <= NR) of out */
static void tile(const nk_part *parts, int nparts, long m0, int mr, const float *bp, const float *bias, float *out,
                 long ldo, int nc, const float *const *irow, int act) {
    int init_out = irow != NULL;
    float c[MR][NR];
    for (int r = 0; r < mr; r++)
        for (int k = 0; k < NR; k++)
            c[r][k] = k >= nc ? 0.f : init_out ? irow[r][k] : bias != NULL ? bias[k] : 0.f;
    for (int q = 0; q < nparts; q++) {
        const nk_part *p = parts + q;
        for (long k = 0; k < p->k; k++, bp += NR)
            for (int r = 0; r < mr; r++) {
                float av = p->a[(m0 + r) * p->sm + k * p->sk];
                for (int j = 0; j < NR; j++) c[r][j] += av * bp[j];
            }
    }
    for (int r = 0; r < mr; r++)
        for (int k = 0; k < nc; k++) out[(m0 + r) * ldo + k] = act1(c[r][k], act);
}
#endif

/* one thread's scratch buffers, kept between calls (the OpenMP pool's threads live as long as the process): slot
 * 0 for the rows of parts read across their columns, slot 1 for a Winograd band (kernels.c).
 * NULL where the memory could not be had (the callers then do without, or report it). */
static __thread float *scratch_buf[2] = {NULL, NULL};
static __thread size_t scratch_len[2] = {0, 0};

float *nk_scratch(int slot, size_t n) {
    if (n > scratch_len[slot]) {
        free(scratch_buf[slot]);
        scratch_buf[slot] = (float *)malloc(n * sizeof(float));
        scratch_len[slot] = scratch_buf[slot] != NULL ? n : 0;
    }
    return scratch_buf[slot];
}

/* dst[r * k + c] = src[r * sm + c * sk] for rows < rows, columns < k: 8 x 8 blocks transposed in registers where
 * the rows are adjacent in memory (sm = 1: an NCHW map), element by element elsewhere */
static void transpose_rows(const float *src, long sm, long sk, long rows, long k, float *dst) {
    long c0 = 0;
#ifdef NK_AVX2
    if (sm == 1) {
        for (; c0 + 8 <= k; c0 += 8) {
            long r0 = 0;
            for (; r0 + 8 <= rows; r0 += 8) {
                const float *s0 = src + r0 + c0 * sk;
                __m256 v0 = _mm256_loadu_ps(s0), v1 = _mm256_loadu_ps(s0 + sk), v2 = _mm256_loadu_ps(s0 + 2 * sk);
                __m256 v3 = _mm256_loadu_ps(s0 + 3 * sk), v4 = _mm256_loadu_ps(s0 + 4 * sk);
                __m256 v5 = _mm256_loadu_ps(s0 + 5 * sk), v6 = _mm256_loadu_ps(s0 + 6 * sk);
                __m256 v7 = _mm256_loadu_ps(s0 + 7 * sk);
                __m256 t0 = _mm256_unpacklo_ps(v0, v1), t1 = _mm256_unpackhi_ps(v0, v1);
                __m256 t2 = _mm256_unpacklo_ps(v2, v3), t3 = _mm256_unpackhi_ps(v2, v3);
                __m256 t4 = _mm256_unpacklo_ps(v4, v5), t5 = _mm256_unpackhi_ps(v4, v5);
                __m256 t6 = _mm256_unpacklo_ps(v6, v7), t7 = _mm256_unpackhi_ps(v6, v7);
                __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                float *d = dst + r0 * k + c0;
                _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
                _mm256_storeu_ps(d + k, _mm256_permute2f128_ps(u1, u5, 0x20));
                _mm256_storeu_ps(d + 2 * k, _mm256_permute2f128_ps(u2, u6, 0x20));
                _mm256_storeu_ps(d + 3 * k, _mm256_permute2f128_ps(u3, u7, 0x20));
                _mm256_storeu_ps(d + 4 * k, _mm256_permute2f128_ps(u0, u4, 0x31));
                _mm256_storeu_ps(d + 5 * k, _mm256_permute2f128_ps(u1, u5, 0x31));
                _mm256_storeu_ps(d + 6 * k, _mm256_permute2f128_ps(u2, u6, 0x31));
                _mm256_storeu_ps(d + 7 * k, _mm256_permute2f128_ps(u3, u7, 0x31));
            }
            for (; r0 < rows; r0++)
                for (long c = c0; c < c0 + 8; c++) dst[r0 * k + c] = src[r0 + c * sk];
        }
    }
#endif
    for (long c = c0; c < k; c++)
        for (long r = 0; r < rows; r++) dst[r * k + c] = src[r * sm + c * sk];
}

#define NK_BLOCK (8 * MR) /* rows a thread runs through every panel before the next block */

static void rows_all_panels(const nk_part *parts, int nparts, long r0, long r1, long N, long K, const float *bp,
                            const float *bias, float *out, long ldo, const nk_init *init, int act) {
    long np = (N + NR - 1) / NR;
    nk_part local[NK_MAX_PARTS];
    long strided = 0; /* the columns of parts with a column stride (an NCHW map's pixel matrix) */
    for (int q = 0; q < nparts; q++) {
        local[q] = parts[q];
        if (parts[q].sk != 1) strided += parts[q].k;
    }
    float *buf = strided > 0 ? nk_scratch(0, (size_t)NK_BLOCK * strided) : NULL;
    for (long b0 = r0; b0 < r1; b0 += NK_BLOCK) {
        long b1 = b0 + NK_BLOCK < r1 ? b0 + NK_BLOCK : r1;
        if (buf != NULL) {
            /* copy this block's rows of every strided part into row-major rows (one read of each column's run
             * of pixels), so the tiles below broadcast from contiguous rows, as for a channels_last map */
            float *dst = buf;
            for (int q = 0; q < nparts; q++) {
                const nk_part *p = parts + q;
                if (p->sk == 1) continue;
                transpose_rows(p->a + b0 * p->sm, p->sm, p->sk, b1 - b0, p->k, dst);
                /* the part's row m is at dst + (m - b0) * k */
                local[q].a = (const float *)((uintptr_t)dst - (uintptr_t)(b0 * p->k) * sizeof(float));
                local[q].sm = p->k;
                local[q].sk = 1;
                dst += NK_BLOCK * p->k;
            }
        }
        const float *iblock[NK_BLOCK]; /* the block's rows of the initial map (found once for every panel) */
        if (init != NULL)
            for (long m = b0; m < b1; m++) iblock[m - b0] = init_row(init, m);
        for (long j = 0; j < np; j++) {
            int nc = (int)(N - j * NR < NR ? N - j * NR : NR);
#ifdef NK_AVX512
            int pair = N - j * NR >= 2 * NR; /* two whole panels from j: one 32-column tile (j steps past both) */
#endif
            for (long m0 = b0; m0 < b1; m0 += MR) {
                int mr = (int)(b1 - m0 < MR ? b1 - m0 : MR);
                const float *irow[MR];
                if (init != NULL)
                    for (int r = 0; r < mr; r++) irow[r] = iblock[m0 - b0 + r] + j * NR;
#ifdef NK_AVX512
                if (pair) {
                    tile_two(local, nparts, m0, mr, bp + j * K * NR, K * NR, bias != NULL ? bias + j * NR : NULL,
                             init != NULL ? irow : NULL, out + m0 * ldo + j * NR, ldo, act);
                    continue;
                }
#endif
#ifdef NK_AVX2
                tile_one(local, nparts, m0, mr, bp + j * K * NR, bias != NULL ? bias + j * NR : NULL,
                         init != NULL ? irow : NULL, out + m0 * ldo + j * NR, ldo, nc, act);
#else
                tile(local, nparts, m0, mr, bp + j * K * NR, bias != NULL ? bias + j * NR : NULL, out + j * NR, ldo,
                     nc, init != NULL ? irow : NULL, act);
#endif
            }
#ifdef NK_AVX512
            j += pair;
#endif
        }
    }
}

/* one thread's plain product out (M, N) = A (M, K) @ B, A with row stride lda (Winograd's points, kernels.c) */
void nk_gemm_rows(const float *a, long lda, long M, long K, long N, const float *bp, float *out, long ldo) {
    nk_part part = {a, lda, 1, K};
    rows_all_panels(&part, 1, 0, M, N, K, bp, NULL, out, ldo, NULL, 0);
}

/* the work split: chunks of whole row tiles, a multiple of nthreads of them, about 48 rows each, taken by the threads
 * as they come (schedule dynamic): on a shared machine one core at a time runs slower for a while (a busy sibling
 * hyperthread), and a static split would wait for its half; in quiet phases the two schedules measured the same */
static long n_chunks(long M, int nthreads) {
    long tiles = (M + MR - 1) / MR, want = (tiles + 7) / 8;
    long t = nthreads > 1 ? nthreads : 1;
    want = (want + t - 1) / t * t;
    return want < tiles ? want : tiles > 0 ? tiles : 1;
}

static long chunk_start(long M, long nch, long i) {
    long tiles = (M + MR - 1) / MR;
    long s = tiles * i / nch * MR;
    return s < M ? s : M;
}

/* out (M, N) with row stride ldo = act(init + [A_0 | A_1 | ...] @ B): parts as in this file's header, described by
 * four longs each in desc (base address, row stride, column stride, columns); init NULL: the bias, else the map at
 * init (row stride init_ld; out itself for a sum into it), read through a nearest upsampling from (lh, lw) to
 * (hh, hw) pixels per image where those differ */
void nk_gemm(int nparts, const long *desc, long M, long N, const float *bp, const float *bias, float *out, long ldo,
             const float *init, long init_ld, long lh, long lw, long hh, long hw, int act, int nthreads) {
    nk_part parts[NK_MAX_PARTS];
    nk_init in = {init, init_ld, lh, lw, hh, hw};
    long K = 0;
    if (nparts > NK_MAX_PARTS) return;
    for (int q = 0; q < nparts; q++) {
        parts[q].a = (const float *)(size_t)desc[4 * q];
        parts[q].sm = desc[4 * q + 1];
        parts[q].sk = desc[4 * q + 2];
        parts[q].k = desc[4 * q + 3];
        K += parts[q].k;
    }
    long nch = n_chunks(M, nthreads);
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) if (nthreads > 1)
    for (long i = 0; i < nch; i++)
        rows_all_panels(parts, nparts, chunk_start(M, nch, i), chunk_start(M, nch, i + 1), N, K, bp,
                        init != NULL ? NULL : bias, out, ldo, init != NULL ? &in : NULL, act);
}

/* the activation in place over n floats (SiLU after a Winograd output transform) */
void nk_act(float *v, long n, int act, int nthreads) {
    long blk = 4096, nb = (n + blk - 1) / blk;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && n > 65536)
    for (long i = 0; i < nb; i++) {
        long s = i * blk, e = s + blk < n ? s + blk : n;
        nk_act_run(v + s, (int)(e - s), act);
    }
}
