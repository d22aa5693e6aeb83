/* necklace native kernels: the input and output transforms of Winograd F(4x4, 3x3), float32.
 *
 * Built by necklace/deploy/native/loader.py (an explicit step of deploy(runtime="native")) with the system C compiler; loaded with ctypes (no torch
 * headers, no Python API): plain functions on raw pointers and strides counted in floats. The channel mixing
 * between the two transforms is a batched GEMM that torch runs (torch.bmm), so these loops only move and add.
 *
 * Layout: V and M are (36, t, C) / (36, t, O) row-major, point p = 6a + b of the 6x6 tile, tile index
 * r * tw + j for tile row r of the band and tile column j. Channels are the innermost loop, in blocks of CB, so
 * the compiler vectorises them; a channel stride of 1 (channels_last maps) takes the contiguous loads.
 */
#include <math.h>
#include <stddef.h>

#define CB 16

int nk_native_version(void) { return 6; }

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

/* V[6a + b, tile, c] = (B^T d B)[a, b] for the 6x6 window of tile (r0 + r, j) at rows 4(r0 + r) - 1 ..., columns
 * 4j - 1 ... of the map x (one image; zero outside it), for tile rows r0 .. r0 + rows - 1, tw tiles a row. */
void nk_wino_in(const float *x, long H, long W, long C, long sc, long sh, long sw, long r0, long rows, long tw,
                float *V, int nthreads) {
    long t = rows * tw, nblk = (C + CB - 1) / CB;
    long work = t * nblk;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (long w = 0; w < work; w++) {
        long tile = w / nblk, c0 = (w % nblk) * CB;
        long i = r0 + tile / tw, j = tile % tw;
        int cb = (int)(C - c0 < CB ? C - c0 : CB);
        in_tile(x + c0 * sc, H, W, sc, sh, sw, 4 * i - 1, 4 * j - 1, cb, V + tile * C + c0, t * C);
    }
}

/* out[o, 4(r0 + r) + a, 4j + b] = act((A^T m A)[a, b] + bias[o] (+ out, accumulate)) for M (36, t, O); rows and
 * columns past H, W are dropped. act: 0 none, 1 ReLU (SiLU runs after, as torch's vectorised in-place op: measured
 * faster than an exp polynomial here). bias may be NULL. */
void nk_wino_out(const float *M, const float *bias, long O, long r0, long rows, long tw, float *out, long H, long W,
                 long sc, long sh, long sw, int act, int accumulate, int nthreads) {
    long t = rows * tw, nblk = (O + CB - 1) / CB;
    long work = t * nblk, pstride = t * O;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (long w = 0; w < work; w++) {
        long tile = w / nblk, o0 = (w % nblk) * CB;
        long i = r0 + tile / tw, j = tile % tw;
        int cb = (int)(O - o0 < CB ? O - o0 : CB);
        const float *m = M + tile * O + o0;
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
            for (int b = 0; b < 4; b++) {
                long xx = 4 * j + b;
                if (xx >= W) break;
                float *o = out + yy * sh + xx * sw + o0 * sc;
                float *yb = y[b];
                if (accumulate) {
                    if (cb == CB && sc == 1) {
                        for (int k = 0; k < CB; k++) yb[k] += o[k];
                    } else {
                        for (int k = 0; k < cb; k++) yb[k] += o[k * sc];
                    }
                }
                if (act == 1) {
                    for (int k = 0; k < CB; k++) yb[k] = yb[k] < 0.f ? 0.f : yb[k]; /* NaN stays NaN, as torch's */
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

