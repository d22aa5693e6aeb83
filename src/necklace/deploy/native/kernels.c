/* necklace native kernels: Winograd F(4x4, 3x3) convolution, float32: the input and output transforms and, in
 * between, the channel mixing by gemm.c's kernel, fused per band of tiles (nk_wino_conv).
 *
 * Built by necklace/deploy/native/loader.py (an explicit step of deploy(runtime="native")) with the system C compiler; loaded with ctypes (no torch
 * headers, no Python API): plain functions on raw pointers and strides counted in floats.
 *
 * Layout: V and M are (36, t, C) / (36, t, O) row-major, point p = 6a + b of the 6x6 tile, tile index
 * r * tw + j for tile row r of the band and tile column j. Channels are the innermost loop, in blocks of CB, so
 * the compiler vectorises them; a channel stride of 1 (channels_last maps) takes the contiguous loads.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#define CB 16

int nk_native_version(void) { return 12; }

/* gemm.c */
void nk_act_run(float *v, int n, int act);
void nk_gemm_rows(const float *a, long lda, long M, long K, long N, const float *bp, float *out, long ldo);
float *nk_scratch(int slot, size_t n);

/* B^T row transform of six values (Lavin & Gray F(4x4, 3x3), interpolation points 0, +-1, +-2). */
#define BT_ROWS(d0, d1, d2, d3, d4, d5, r0, r1, r2, r3, r4, r5) \
    do {                                                         \
        r0 = 4.f * (d0) - 5.f * (d2) + (d4);                     \
        r1 = -4.f * ((d1) + (d2)) + (d3) + (d4);                 \
        r2 = 4.f * ((d1) - (d2)) - (d3) + (d4);                  \
        r3 = -2.f * ((d1) - (d3)) - (d2) + (d4);                 \
        r4 = 2.f * ((d1) - (d3)) - (d2) + (d4);                  \
        r5 = 4.f * (d1) - 5.f * (d3) + (d5);                     \
    } while (0)

/* 16 floats as one value (GCC / clang vector extension: one 512-bit register with AVX-512, two 256-bit ones with
 * AVX2, a loop elsewhere); loads and stores through memcpy, which compiles to unaligned vector moves */
typedef float v16 __attribute__((vector_size(64)));

static inline v16 ld16(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void st16(float *p, v16 v) { memcpy(p, &v, sizeof v); }

/* in_tile for a window inside the map, 16 adjacent channels (channel stride 1): no bounds checks, no copies */
static void in_tile16(const float *x, long sh, long sw, float *V, long pstride) {
    v16 t[6][6];
    for (int b = 0; b < 6; b++) {
        const float *c = x + b * sw;
        v16 d0 = ld16(c), d1 = ld16(c + sh), d2 = ld16(c + 2 * sh), d3 = ld16(c + 3 * sh), d4 = ld16(c + 4 * sh);
        v16 d5 = ld16(c + 5 * sh);
        BT_ROWS(d0, d1, d2, d3, d4, d5, t[0][b], t[1][b], t[2][b], t[3][b], t[4][b], t[5][b]);
    }
    for (int a = 0; a < 6; a++) {
        v16 r0, r1, r2, r3, r4, r5;
        BT_ROWS(t[a][0], t[a][1], t[a][2], t[a][3], t[a][4], t[a][5], r0, r1, r2, r3, r4, r5);
        float *o = V + (long)(6 * a) * pstride;
        st16(o, r0);
        st16(o + pstride, r1);
        st16(o + 2 * pstride, r2);
        st16(o + 3 * pstride, r3);
        st16(o + 4 * pstride, r4);
        st16(o + 5 * pstride, r5);
    }
}

static void in_tile(const float *x, long H, long W, long sc, long sh, long sw, long y0, long x0, int cb, float *V,
                    long pstride) {
    float d[6][6][CB];
    for (int a = 0; a < 6; a++) {
        long yy = y0 + a;
        for (int b = 0; b < 6; b++) {
            long xx = x0 + b;
            float *dst = d[a][b];
            if (yy < 0 || yy >= H || xx < 0 || xx >= W) {
                for (int k = 0; k < CB; k++) dst[k] = 0.f;
                continue;
            }
            const float *s = x + yy * sh + xx * sw;
            if (cb == CB && sc == 1) {
                for (int k = 0; k < CB; k++) dst[k] = s[k];
            } else {
                for (int k = 0; k < CB; k++) dst[k] = k < cb ? s[k * sc] : 0.f;
            }
        }
    }
    float t[6][6][CB];
    for (int b = 0; b < 6; b++)
        for (int k = 0; k < CB; k++)
            BT_ROWS(d[0][b][k], d[1][b][k], d[2][b][k], d[3][b][k], d[4][b][k], d[5][b][k], t[0][b][k], t[1][b][k],
                    t[2][b][k], t[3][b][k], t[4][b][k], t[5][b][k]);
    for (int a = 0; a < 6; a++) {
        float r[6][CB];
        for (int k = 0; k < CB; k++)
            BT_ROWS(t[a][0][k], t[a][1][k], t[a][2][k], t[a][3][k], t[a][4][k], t[a][5][k], r[0][k], r[1][k],
                    r[2][k], r[3][k], r[4][k], r[5][k]);
        for (int b = 0; b < 6; b++) {
            float *o = V + (long)(6 * a + b) * pstride;
            if (cb == CB) {
                for (int k = 0; k < CB; k++) o[k] = r[b][k];
            } else {
                for (int k = 0; k < cb; k++) o[k] = r[b][k];
            }
        }
    }
}

/* V[6a + b, tile, c] = (B^T d B)[a, b] for the 6x6 window of tile (i, j) = divmod(t0 + tile, tw) at rows 4i - 1 ...,
 * columns 4j - 1 ... of the map x (one image; zero outside it), for the t tiles from t0 (tw tiles a row). */
static void wino_in_band(const float *x, long H, long W, long C, long sc, long sh, long sw, long t0, long t, long tw,
                         float *V) {
    for (long tile = 0; tile < t; tile++) {
        long i = (t0 + tile) / tw, j = (t0 + tile) % tw;
        long y0 = 4 * i - 1, x0 = 4 * j - 1;
        int inside = sc == 1 && y0 >= 0 && x0 >= 0 && y0 + 5 < H && x0 + 5 < W;
        for (long c0 = 0; c0 < C; c0 += CB) {
            int cb = (int)(C - c0 < CB ? C - c0 : CB);
            if (inside && cb == CB)
                in_tile16(x + c0 + y0 * sh + x0 * sw, sh, sw, V + tile * C + c0, t * C);
            else
                in_tile(x + c0 * sc, H, W, sc, sh, sw, y0, x0, cb, V + tile * C + c0, t * C);
        }
    }
}

/* one 16-channel block of a whole output tile inside the map, channel strides 1 (out and res): wino_out_band's
 * arithmetic (A^T m A, bias, accumulate, activation, residual) on 16-float vectors */
static void out_tile16(const float *m, long pstride, const float *bias, float *o, long sh, long sw, int act,
                       int accumulate, const float *res, long rh, long rw) {
    v16 s[4][6];
    for (int b = 0; b < 6; b++) {
        v16 v0 = ld16(m + b * pstride), v1 = ld16(m + (6 + b) * pstride), v2 = ld16(m + (12 + b) * pstride);
        v16 v3 = ld16(m + (18 + b) * pstride), v4 = ld16(m + (24 + b) * pstride), v5 = ld16(m + (30 + b) * pstride);
        v16 p1 = v1 + v2, n1 = v1 - v2, p2 = v3 + v4, n2 = v3 - v4;
        s[0][b] = v0 + p1 + p2;
        s[1][b] = n1 + 2.f * n2;
        s[2][b] = p1 + 4.f * p2;
        s[3][b] = n1 + 8.f * n2 + v5;
    }
    v16 bv = {0};
    if (bias != NULL) bv = ld16(bias);
    for (int a = 0; a < 4; a++) {
        float y[4 * CB];
        v16 p1 = s[a][1] + s[a][2], n1 = s[a][1] - s[a][2], p2 = s[a][3] + s[a][4], n2 = s[a][3] - s[a][4];
        v16 y0 = s[a][0] + p1 + p2 + bv, y1 = n1 + 2.f * n2 + bv, y2 = p1 + 4.f * p2 + bv;
        v16 y3 = n1 + 8.f * n2 + s[a][5] + bv;
        float *row = o + a * sh;
        if (accumulate) {
            y0 += ld16(row), y1 += ld16(row + sw), y2 += ld16(row + 2 * sw), y3 += ld16(row + 3 * sw);
        }
        st16(y, y0), st16(y + CB, y1), st16(y + 2 * CB, y2), st16(y + 3 * CB, y3);
        if (act == 1) {
            for (int k = 0; k < 4 * CB; k++) y[k] = y[k] < 0.f ? 0.f : y[k]; /* NaN stays NaN */
        } else if (act == 2) {
            nk_act_run(y, 4 * CB, 2);
        }
        for (int b = 0; b < 4; b++) {
            v16 v = ld16(y + b * CB);
            if (res != NULL) v += ld16(res + a * rh + b * rw);
            st16(row + b * sw, v);
        }
    }
}

/* out[o, 4i + a, 4j + b] = act((A^T m A)[a, b] + bias[o] (+ out, accumulate)) (+ res) for M (36, t, O), tile (i, j) =
 * divmod(t0 + tile, tw); rows
 * and columns past H, W are dropped. act: 0 none, 1 ReLU, 2 SiLU (gemm.c's vectorised form). bias may be NULL;
 * res (a residual added after the activation, strides rs[0..2] for channel, row, column) may be NULL. */
static void wino_out_band(const float *M, const float *bias, long O, long t0, long t, long tw, float *out, long H,
                          long W, long sc, long sh, long sw, int act, int accumulate, const float *res,
                          const long *rs) {
    long pstride = t * O;
    for (long tile = 0; tile < t; tile++) {
        long i = (t0 + tile) / tw, j = (t0 + tile) % tw;
        int whole = sc == 1 && 4 * i + 3 < H && 4 * j + 3 < W && (res == NULL || rs[0] == 1);
        for (long o0 = 0; o0 < O; o0 += CB) {
            int cb = (int)(O - o0 < CB ? O - o0 : CB);
            const float *m = M + tile * O + o0;
            if (whole && cb == CB) {
                out_tile16(m, pstride, bias != NULL ? bias + o0 : NULL, out + 4 * i * sh + 4 * j * sw + o0, sh, sw, act,
                           accumulate, res != NULL ? res + 4 * i * rs[1] + 4 * j * rs[2] + o0 : NULL, rs[1], rs[2]);
                continue;
            }
            float s[4][6][CB];
            for (int b = 0; b < 6; b++) {
                const float *q[6];
                for (int a = 0; a < 6; a++) q[a] = m + (long)(6 * a + b) * pstride;
                float v[6][CB];
                if (cb == CB) {
                    for (int a = 0; a < 6; a++)
                        for (int k = 0; k < CB; k++) v[a][k] = q[a][k];
                } else {
                    for (int a = 0; a < 6; a++)
                        for (int k = 0; k < CB; k++) v[a][k] = k < cb ? q[a][k] : 0.f;
                }
                for (int k = 0; k < CB; k++) {
                    float p1 = v[1][k] + v[2][k], n1 = v[1][k] - v[2][k], p2 = v[3][k] + v[4][k], n2 = v[3][k] - v[4][k];
                    s[0][b][k] = v[0][k] + p1 + p2;
                    s[1][b][k] = n1 + 2.f * n2;
                    s[2][b][k] = p1 + 4.f * p2;
                    s[3][b][k] = n1 + 8.f * n2 + v[5][k];
                }
            }
            float bv[CB];
            for (int k = 0; k < CB; k++) bv[k] = (bias != NULL && k < cb) ? bias[o0 + k] : 0.f;
            for (int a = 0; a < 4; a++) {
                long yy = 4 * i + a;
                if (yy >= H) break;
                float y[4][CB];
                for (int k = 0; k < CB; k++) {
                    float p1 = s[a][1][k] + s[a][2][k], n1 = s[a][1][k] - s[a][2][k];
                    float p2 = s[a][3][k] + s[a][4][k], n2 = s[a][3][k] - s[a][4][k];
                    y[0][k] = s[a][0][k] + p1 + p2 + bv[k];
                    y[1][k] = n1 + 2.f * n2 + bv[k];
                    y[2][k] = p1 + 4.f * p2 + bv[k];
                    y[3][k] = n1 + 8.f * n2 + s[a][5][k] + bv[k];
                }
                int bn = (int)(W - 4 * j < 4 ? W - 4 * j : 4); /* the columns inside the map */
                if (accumulate)
                    for (int b = 0; b < bn; b++) {
                        const float *o = out + yy * sh + (4 * j + b) * sw + o0 * sc;
                        if (cb == CB && sc == 1) {
                            for (int k = 0; k < CB; k++) y[b][k] += o[k];
                        } else {
                            for (int k = 0; k < cb; k++) y[b][k] += o[k * sc];
                        }
                    }
                if (act == 1) {
                    for (int b = 0; b < bn; b++)
                        for (int k = 0; k < CB; k++) y[b][k] = y[b][k] < 0.f ? 0.f : y[b][k]; /* NaN stays NaN */
                } else if (act == 2) {
                    nk_act_run(y[0], bn * CB, 2); /* the row's pixels in one call: their SiLUs overlap */
                }
                for (int b = 0; b < bn; b++) {
                    long xx = 4 * j + b;
                    float *o = out + yy * sh + xx * sw + o0 * sc;
                    float *yb = y[b];
                    if (res != NULL) {
                        const float *rp = res + yy * rs[1] + xx * rs[2] + o0 * rs[0];
                        if (cb == CB && rs[0] == 1) {
                            for (int k = 0; k < CB; k++) yb[k] += rp[k];
                        } else {
                            for (int k = 0; k < cb; k++) yb[k] += rp[k * rs[0]];
                        }
                    }
                    if (cb == CB && sc == 1) {
                        for (int k = 0; k < CB; k++) o[k] = yb[k];
                    } else {
                        for (int k = 0; k < cb; k++) o[k * sc] = yb[k];
                    }
                }
            }
        }
    }
}

/* out = act(conv3x3(x) + bias (+ out, accumulate)) (+ res), stride 1, zero padding 1, for n images (image strides
 * xn, on; res: NULL or a map of out's shape with strides rn, rc, rh, rw, added after the activation):
 * per band of tiles (consecutive in row-major order), one thread transforms the band's input tiles into V (36, t, C), mixes the channels
 * with gemm.c's kernel into M (36, t, O) (U packed as (36, ceil(O/16), C, 16)) and transforms M back into out, so
 * V and M stay in that core's cache. Bands are about `tiles` tiles, their number a multiple of nthreads, taken by the
 * threads as they come; the call
 * returns -1 where a scratch buffer could not be allocated (the output is then incomplete: the caller raises),
 * else 0. */
int nk_wino_conv(const float *x, long n, long H, long W, long C, long xn, long sc, long sh, long sw, const float *up,
                 const float *bias, long O, float *out, long on, long oc, long oh, long ow, int act, int accumulate,
                 const float *res, long rn, long rc, long rh, long rw, long tiles, int nthreads) {
    const long rs[3] = {rc, rh, rw};
    long th = (H + 3) / 4, tw = (W + 3) / 4, T = th * tw;
    long nt = nthreads > 1 ? nthreads : 1;
    long per_image = (T + tiles - 1) / tiles;
    per_image = (per_image + nt - 1) / nt * nt; /* a multiple of the threads (for one image: balanced) */
    if (per_image > T) per_image = T;
    if (per_image < 1) per_image = 1;
    long work = n * per_image, tmax = (T + per_image - 1) / per_image;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && work > 1) reduction(| : failed)
    {
        float *V = nk_scratch(1, (size_t)36 * tmax * (C + O)); /* V and M of a band */
        if (V == NULL) {
            failed = 1;
        } else {
            float *M = V + (size_t)36 * tmax * C;
#pragma omp for schedule(dynamic, 1) /* (taken as they come: see gemm.c's n_chunks) */
            for (long w = 0; w < work; w++) {
                long img = w / per_image, band = w % per_image;
                long t0 = T * band / per_image, t = T * (band + 1) / per_image - t0; /* sizes differ by one at most */
                if (t == 0) continue;
                wino_in_band(x + img * xn, H, W, C, sc, sh, sw, t0, t, tw, V);
                long np = (O + 15) / 16;
                for (int p = 0; p < 36; p++)
                    nk_gemm_rows(V + (long)p * t * C, C, t, C, O, up + (long)p * np * C * 16, M + (long)p * t * O, O);
                wino_out_band(M, bias, O, t0, t, tw, out + img * on, H, W, oc, oh, ow, act, accumulate,
                              res != NULL ? res + img * rn : NULL, rs);
            }
        }
    }
    return failed ? -1 : 0;
}
