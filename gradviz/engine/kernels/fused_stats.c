/* gradviz's compiled statistics kernels (gradviz/engine/kernels/loader.py builds, checks and loads them):
 *   gv_row_parts_*   partial sums of materialised per-sample gradient rows (below);
 *   gv_bn_parts_*    a BatchNorm's per-sample gamma/beta sums;
 *   gv_conv_parts_f32  the direct conv kernel: each sample's conv weight gradient formed and
 *                      reduced in SIMD registers, never materialised (further down).
 *
 * Fused partial sums of per-sample gradient rows: ONE pass computes, for each segment of a row,
 *   s1 = sum |g|,  s2 = sum g^2,  mx = max g,  mn = min g,  sm = sum g
 * (the five numbers the six gradient statistics are finished from; gradviz/engine/reduce.py).
 *
 * Layout: g is (rows, n) row-major; each row is split into `seg` nearly equal spans and
 * out[(r * seg + j) * 5 + {0..4}] receives the partials of span j of row r, so callers can
 * spread few long rows over several threads. Indices [i0, i1) of the (row, span) space are
 * computed by one call (callers run disjoint ranges on different threads).
 *
 * Vectorisation without -ffast-math: LANES independent accumulators per statistic (the fixed
 * inner loop maps onto SIMD registers), so no floating-point reassociation is needed and the
 * result is deterministic. Lane partial sums are combined in double. NaN inputs make the sums
 * NaN (the statistics are then reported as invalid by gradviz), max/min follow IEEE compares.
 *
 * Threads: OpenMP only where the loader links the OpenMP runtime PyTorch itself loaded (one
 * runtime, one thread pool per process); otherwise the caller splits the index range over its own
 * threads (each call then runs with threads = 1).
 *
 * Built once by gradviz at run time with the system C compiler (cc -O3 -march=native -shared),
 * cached under a key of this source, the compiler's version and the CPU's feature flags, and run
 * once in a child process before this process loads it (loader.py).
 */
/* The one version number: loader.py reads it from this line and compares gv_kernel_version(). */
#define GV_KERNEL_VERSION 14
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define LANES 32

#define DEFINE_ROW_PARTS(NAME, T, ABS)                                                           \
    void NAME(const T *g, int64_t n, int64_t seg, int64_t i0, int64_t i1, double *out,          \
              int threads) {                                                                    \
        _Pragma("omp parallel for num_threads(threads) schedule(static) if(threads > 1)")       \
        for (int64_t idx = i0; idx < i1; idx++) {                                               \
            int64_t r = idx / seg, j = idx % seg;                                              \
            int64_t lo = n * j / seg, hi = n * (j + 1) / seg;                                  \
            const T *x = g + r * n;                                                            \
            T a1[LANES], a2[LANES], am[LANES], an[LANES], as[LANES];                           \
            for (int l = 0; l < LANES; l++) {                                                  \
                a1[l] = 0; a2[l] = 0; as[l] = 0; am[l] = -INFINITY; an[l] = INFINITY;          \
            }                                                                                  \
            int64_t k = lo;                                                                    \
            for (; k + LANES <= hi; k += LANES) {                                              \
                for (int l = 0; l < LANES; l++) {                                              \
                    T v = x[k + l];                                                            \
                    a1[l] += ABS(v);                                                           \
                    a2[l] += v * v;                                                            \
                    as[l] += v;                                                                \
                    am[l] = v > am[l] ? v : am[l];                                             \
                    an[l] = v < an[l] ? v : an[l];                                             \
                }                                                                              \
            }                                                                                  \
            double s1 = 0, s2 = 0, sm = 0;                                                     \
            T mx = -INFINITY, mn = INFINITY;                                                   \
            for (int l = 0; l < LANES; l++) {                                                  \
                s1 += a1[l]; s2 += a2[l]; sm += as[l];                                         \
                mx = am[l] > mx ? am[l] : mx;                                                  \
                mn = an[l] < mn ? an[l] : mn;                                                  \
            }                                                                                  \
            for (; k < hi; k++) {                                                              \
                T v = x[k];                                                                    \
                s1 += ABS(v); s2 += (double)v * v; sm += v;                                    \
                mx = v > mx ? v : mx;                                                          \
                mn = v < mn ? v : mn;                                                          \
            }                                                                                  \
            double *o = out + idx * 5;                                                         \
            o[0] = s1; o[1] = s2; o[2] = mx; o[3] = mn; o[4] = sm;                             \
        }                                                                                      \
    }

DEFINE_ROW_PARTS(gv_row_parts_f32, float, fabsf)
DEFINE_ROW_PARTS(gv_row_parts_f64, double, fabs)

/* BatchNorm: for rows r = (sample, channel c = r % C) of x and d (rows, n), one pass gives
 *   out[2r] = sum d (x - mu_c),   out[2r + 1] = sum d
 * (the per-sample gamma gradient before its 1/sigma factor, and the beta gradient). */
#define DEFINE_BN_PARTS(NAME, T)                                                                 \
    void NAME(const T *x, const T *d, const T *mu, int64_t C, int64_t n, int64_t rows,          \
              double *out, int threads) {                                                       \
        _Pragma("omp parallel for num_threads(threads) schedule(static) if(threads > 1)")       \
        for (int64_t r = 0; r < rows; r++) {                                                    \
            const T *xr = x + r * n, *dr = d + r * n;                                          \
            T m = mu[r % C];                                                                   \
            T ag[LANES], ab[LANES];                                                            \
            for (int l = 0; l < LANES; l++) { ag[l] = 0; ab[l] = 0; }                          \
            int64_t k = 0;                                                                     \
            for (; k + LANES <= n; k += LANES) {                                               \
                for (int l = 0; l < LANES; l++) {                                              \
                    ag[l] += dr[k + l] * (xr[k + l] - m);                                      \
                    ab[l] += dr[k + l];                                                        \
                }                                                                              \
            }                                                                                  \
            double sg = 0, sb = 0;                                                             \
            for (int l = 0; l < LANES; l++) { sg += ag[l]; sb += ab[l]; }                      \
            for (; k < n; k++) { sg += (double)dr[k] * (xr[k] - m); sb += dr[k]; }             \
            out[2 * r] = sg; out[2 * r + 1] = sb;                                              \
        }                                                                                      \
    }

DEFINE_BN_PARTS(gv_bn_parts_f32, float)
DEFINE_BN_PARTS(gv_bn_parts_f64, double)

/* ---------------------------------------------------------------------------------------------
 * Direct conv statistics: the five partial sums of each sample's Conv2d weight gradient
 *   G_b[o, k] = sum_p delta_b[o, p] U_b[k, p]      (U_b the implicit im2col of the input)
 * computed tile by tile in SIMD registers and reduced there: G_b is never written to memory.
 * Vectorised over output channels o (delta_b is transposed to (P, O) per sample, padded with zero
 * channels to whole vectors); each row k of U_b is read straight from the zero-padded input as a
 * broadcast scalar at offset off[p] (any stride, padding, dilation; 3x3 dilation-1 kernels use
 * three row pointers per channel). Lanes of padded channels are kept out of max/min, and hold
 * exact zeros for the sums. Sums run in float per lane within a block of rows, then in double.
 * groups = 1 only (gradviz uses other strategies for grouped convs).
 */

#if defined(__AVX512F__)
#include <immintrin.h>
#define VL 16
typedef __m512 vf;
#define V_LOAD(p) _mm512_loadu_ps(p)
#define V_SET1(s) _mm512_set1_ps(s)
#define V_ZERO() _mm512_setzero_ps()
#define V_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define V_ADD(a, b) _mm512_add_ps(a, b)
#define V_MUL(a, b) _mm512_mul_ps(a, b)
#define V_MAX(a, b) _mm512_max_ps(a, b)
#define V_MIN(a, b) _mm512_min_ps(a, b)
#define V_ABS(a) _mm512_abs_ps(a)
#define V_STORE(p, a) _mm512_storeu_ps(p, a)
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VL 8
typedef __m256 vf;
#define V_LOAD(p) _mm256_loadu_ps(p)
#define V_SET1(s) _mm256_set1_ps(s)
#define V_ZERO() _mm256_setzero_ps()
#define V_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define V_ADD(a, b) _mm256_add_ps(a, b)
#define V_MUL(a, b) _mm256_mul_ps(a, b)
#define V_MAX(a, b) _mm256_max_ps(a, b)
#define V_MIN(a, b) _mm256_min_ps(a, b)
#define V_ABS(a) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a)
#define V_STORE(p, a) _mm256_storeu_ps(p, a)
#else
#define VL 1
typedef float vf;
#define V_LOAD(p) (*(p))
#define V_SET1(s) (s)
#define V_ZERO() 0.0f
#define V_FMA(a, b, c) ((a) * (b) + (c))
#define V_ADD(a, b) ((a) + (b))
#define V_MUL(a, b) ((a) * (b))
#define V_MAX(a, b) ((a) > (b) ? (a) : (b))
#define V_MIN(a, b) ((a) < (b) ? (a) : (b))
#define V_ABS(a) fabsf(a)
#define V_STORE(p, a) (*(p) = (a))
#endif

typedef struct { vf s1, s2, sm, mx, mn; } vstats;

/* What one output tile (rows k0.., channels o0..) is reduced into. */
typedef struct {
    int only_s2;
    const vf *pen;      /* -inf/+inf penalties of padded channel lanes (last tile), or 0 */
    const float *scale; /* per-channel factor applied to G before its statistics (at o0), or 0 */
    const float *wt;    /* W transposed (K, O), at row k0 and channel o0, for the dot products, or 0 */
    double *dot;        /* per-channel accumulator of sum_k W[o, k] G[o, k] (at o0) */
    int64_t opad, wstride;
    vstats *st;
} tilectx;

#define INLINE static inline __attribute__((always_inline))

/* acc vectors of one tile -> running stats (of scale * acc); the dot products with W use the
   unscaled acc. Lanes of padded output channels hold exact zeros, ignored by the sums, and are
   kept out of max/min by adding -inf/+inf. */
#define REDUCE_TILE(MR, NV)                                                                      \
    {                                                                                            \
        vstats *st = t->st;                                                                      \
        vf dv[NV], sc[NV];                                                                       \
        for (int v = 0; v < NV; v++) {                                                           \
            dv[v] = V_ZERO();                                                                    \
            sc[v] = t->scale ? V_LOAD(t->scale + v * VL) : V_SET1(1.0f);                         \
        }                                                                                        \
        for (int r = 0; r < MR; r++) {                                                           \
            if (r >= mr) break;                                                                  \
            for (int v = 0; v < NV; v++) {                                                       \
                vf a = acc[r][v];                                                                \
                if (t->wt) dv[v] = V_FMA(a, V_LOAD(t->wt + r * t->wstride + v * VL), dv[v]);     \
                if (t->scale) a = V_MUL(a, sc[v]);                                               \
                st->s2 = V_FMA(a, a, st->s2);                                                    \
                if (!t->only_s2) {                                                               \
                    st->s1 = V_ADD(st->s1, V_ABS(a));                                            \
                    st->sm = V_ADD(st->sm, a);                                                   \
                    if (t->pen) { st->mx = V_MAX(st->mx, V_ADD(a, t->pen[2 * v]));               \
                                  st->mn = V_MIN(st->mn, V_ADD(a, t->pen[2 * v + 1])); }         \
                    else { st->mx = V_MAX(st->mx, a); st->mn = V_MIN(st->mn, a); }               \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        if (t->wt) {                                                                             \
            float dl[NV * VL];                                                                   \
            for (int v = 0; v < NV; v++) V_STORE(dl + v * VL, dv[v]);                            \
            for (int l = 0; l < NV * VL; l++) t->dot[l] += dl[l];                                \
        }                                                                                        \
    }

/* The two tile kernels below differ only in how a row of U is addressed (the products and the
   reduction are the same): generic = one pointer per row; 3x3 = three row pointers per channel
   with the taps as constant offsets, which keeps the pointers in registers. */

/* generic tile: row r of U at position p is xr[r][off[p]] */
#define DEFINE_TILE(NAME, MR, NV)                                                                \
    INLINE void NAME(const float *const *xr, int mr, const float *dt, const int64_t *off,        \
                     int64_t P, const tilectx *t) {                                              \
        vf acc[MR][NV];                                                                          \
        for (int r = 0; r < MR; r++)                                                             \
            for (int v = 0; v < NV; v++) acc[r][v] = V_ZERO();                                   \
        const float *rows[MR];                                                                   \
        for (int r = 0; r < MR; r++) rows[r] = xr[r];                                            \
        int64_t opad = t->opad;                                                                  \
        for (int64_t p = 0; p < P; p++) {                                                        \
            const float *b = dt + p * opad;                                                      \
            vf bv[NV];                                                                           \
            for (int v = 0; v < NV; v++) bv[v] = V_LOAD(b + v * VL);                             \
            int64_t q = off[p];                                                                  \
            for (int r = 0; r < MR; r++) {                                                       \
                vf a = V_SET1(rows[r][q]);                                                       \
                for (int v = 0; v < NV; v++) acc[r][v] = V_FMA(a, bv[v], acc[r][v]);             \
            }                                                                                    \
        }                                                                                        \
        REDUCE_TILE(MR, NV)                                                                      \
    }

/* 3x3 taps of MC channels (dilation 1): row (c, i, j) is ch[c] + i*wp + j at off[p] */
#define DEFINE_TILE33(NAME, MC, NV)                                                              \
    INLINE void NAME(const float *const *ch, int mr, int64_t wp, const float *dt,                \
                     const int64_t *off, int64_t P, const tilectx *t) {                          \
        enum { MR = 9 * MC };                                                                    \
        vf acc[MR][NV];                                                                          \
        for (int r = 0; r < MR; r++)                                                             \
            for (int v = 0; v < NV; v++) acc[r][v] = V_ZERO();                                   \
        const float *rp[3 * MC];                                                                 \
        for (int c = 0; c < MC; c++)                                                             \
            for (int i = 0; i < 3; i++) rp[3 * c + i] = ch[c] + i * wp;                          \
        int64_t opad = t->opad;                                                                  \
        for (int64_t p = 0; p < P; p++) {                                                        \
            const float *b = dt + p * opad;                                                      \
            vf bv[NV];                                                                           \
            for (int v = 0; v < NV; v++) bv[v] = V_LOAD(b + v * VL);                             \
            int64_t q = off[p];                                                                  \
            for (int ci = 0; ci < 3 * MC; ci++) {                                                \
                const float *s = rp[ci] + q;                                                     \
                for (int j = 0; j < 3; j++) {                                                    \
                    vf a = V_SET1(s[j]);                                                         \
                    for (int v = 0; v < NV; v++)                                                 \
                        acc[3 * ci + j][v] = V_FMA(a, bv[v], acc[3 * ci + j][v]);                \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        REDUCE_TILE(MR, NV)                                                                      \
    }

DEFINE_TILE(tile_g1, 12, 1)
DEFINE_TILE(tile_g2, 12, 2)
DEFINE_TILE(tile_g4, 6, 4)
DEFINE_TILE33(tile_t1, 2, 1)
DEFINE_TILE33(tile_t1s, 1, 1)
DEFINE_TILE33(tile_t2, 1, 2)

static void flush(vstats *st, double *d3) {
    float t[3][VL];
    V_STORE(t[0], st->s1); V_STORE(t[1], st->s2); V_STORE(t[2], st->sm);
    for (int l = 0; l < VL; l++) { d3[0] += t[0][l]; d3[1] += t[1][l]; d3[2] += t[2][l]; }
    st->s1 = V_ZERO(); st->s2 = V_ZERO(); st->sm = V_ZERO();
}

/* x (B, C, H, W), d (B, O, Ho, Wo) contiguous float32; shape = {B, C, H, W, O, Ho, Wo, kh, kw,
   sh, sw, ph, pw, dh, dw}. For each sample's weight gradient G = d_b * x_b (O, C, kh, kw) of a
   groups=1 Conv2d with zero padding: out (B, 5) double = s1 s2 mx mn sm of scale[o] * G[o, k]
   (scale (O) or NULL for 1; only s2 is valid if only_s2), and, if w (O, C*kh*kw) is given,
   dot (B, O) double = sum_k w[o, k] G[o, k] (unscaled G) and dsum (B, O) = sum_p d[o, p].
   w is given transposed, (K, O) row-major, readable up to 64 floats past its end.
   dscale (O) or NULL: d is read as dscale[o] * d[o, p] (then G, its dot products and its
   statistics are those of the scaled d; dsum stays that of d).
   z (B, O, Ho, Wo) and zshift (O), or NULL: zdot (B, O) = sum_p d[o, p] (z[o, p] - zshift[o])
   (a folded BatchNorm's gamma gradient, from its output z). dsum is written if dot or zdot is.
   rowsel (nsel indices into the K = C*kh*kw rows of G) or NULL: only those rows of G enter the
   statistics; not with w. The other rows are given as single (nsingle triples p, h, w: a tap that
   sees output position p only, at input pixel (h, w); each of its C rows is x[c, h, w] * d[:, p],
   added in closed form) and nzero taps that see no position (rows of zeros).
   Returns 0, or -1 if memory could not be allocated. */
/* Arguments of gv_conv_parts_f32 by name (mirrored by a ctypes.Structure in binding.py, whose size
   the loader compares with gv_conv_args_size() before the first call). */
typedef struct {
    const float *x, *d;
    const int64_t *shape;
    const float *scale, *dscale, *wt, *z, *zshift;
    double *out, *dot, *dsum, *zdot;
    const int64_t *rowsel, *single;
    int64_t nsel, nsingle, nzero;
    int32_t only_s2, threads;
} gv_conv_args;

int64_t gv_conv_args_size(void) { return (int64_t)sizeof(gv_conv_args); }

int gv_conv_parts_f32(const gv_conv_args *a) {
    const float *x = a->x, *d = a->d, *scale = a->scale, *dscale = a->dscale, *wt_in = a->wt, *z = a->z,
                *zshift = a->zshift;
    const int64_t *shape = a->shape, *rowsel = a->rowsel, *single = a->single;
    double *out = a->out, *dot = a->dot, *dsum = a->dsum, *zdot = a->zdot;
    int64_t nsel = a->nsel, nsingle = a->nsingle, nzero = a->nzero;
    int only_s2 = a->only_s2, threads = a->threads;
    int64_t B = shape[0], C = shape[1], H = shape[2], W = shape[3], O = shape[4], Ho = shape[5],
            Wo = shape[6], kh = shape[7], kw = shape[8], sh = shape[9], sw = shape[10],
            ph = shape[11], pw = shape[12], dh = shape[13], dw = shape[14];
    int64_t Hp = H + 2 * ph, Wp = W + 2 * pw, P = Ho * Wo, K = C * kh * kw;
    int nv = O <= VL ? 1 : O <= 2 * VL ? 2 : 4;
    int t33 = kh == 3 && kw == 3 && dh == 1 && dw == 1 && !rowsel;
    int64_t Ksel = rowsel ? nsel : K;
    if (t33 && nv == 4) nv = 2;
    int64_t nr = nv * VL, opad = (O + nr - 1) / nr * nr;
    int64_t *off = malloc(sizeof(int64_t) * (P + K));
    float *sc = malloc(sizeof(float) * (opad + 16));
    if (!off || !sc) { free(off); free(sc); return -1; }
    int64_t *rowoff = off + P;
    for (int64_t o = 0; o < opad; o++) sc[o] = o < O ? (scale ? scale[o] : 1.0f) : 0.0f;
    /* rows of W^T have stride O: the lanes of padded channels read neighbouring (finite) entries,
       which only meet the exact zeros of those channels' accumulators and are never stored */
    const float *wt = wt_in;
    int failed = 0;
    for (int64_t ho = 0; ho < Ho; ho++)
        for (int64_t wo = 0; wo < Wo; wo++) off[ho * Wo + wo] = ho * sh * Wp + wo * sw;
    for (int64_t c = 0; c < C; c++)
        for (int64_t i = 0; i < kh; i++)
            for (int64_t j = 0; j < kw; j++) rowoff[(c * kh + i) * kw + j] = c * Hp * Wp + i * dh * Wp + j * dw;
    /* penalties for the padded lanes of the last output tile */
    vf pen_last[8];
    float pf[8][VL];
    for (int v = 0; v < nv; v++)
        for (int l = 0; l < VL; l++) {
            int64_t o = opad - nr + v * VL + l;
            pf[2 * v][l] = o < O ? 0.0f : -INFINITY;
            pf[2 * v + 1][l] = o < O ? 0.0f : INFINITY;
        }
    for (int i = 0; i < 2 * nv; i++) pen_last[i] = V_LOAD(pf[i]);
    int has_pad = opad != O;
    _Pragma("omp parallel num_threads(threads) if(threads > 1)")
    {
        float *xp = malloc(sizeof(float) * (C * Hp * Wp + P * opad + opad + 64));
        double *dsacc = malloc(sizeof(double) * (2 * O + 1)), *zacc = dsacc ? dsacc + O : 0;
        double *dacc = malloc(sizeof(double) * (opad + 1));
        float *dt = xp ? xp + C * Hp * Wp : 0;
        if (!dsacc || !dacc) { free(xp); xp = 0; }
        if (!xp) failed = 1;
        _Pragma("omp for schedule(static)")
        for (int64_t b = 0; b < B; b++) {
            if (!xp) continue;
            const float *xb = x + b * C * H * W, *db = d + b * O * P;
            if (ph || pw) memset(xp, 0, sizeof(float) * C * Hp * Wp);
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++)
                    memcpy(xp + c * Hp * Wp + (h + ph) * Wp + pw, xb + (c * H + h) * W, sizeof(float) * W);
            for (int64_t o = 0; o < O; o++) { dsacc[o] = 0.0; zacc[o] = 0.0; }
            if (z) {
                const float *zb = z + b * O * P;
                for (int64_t o = 0; o < O; o++) {  /* 16 independent double partial sums (SIMD) */
                    const float *dr = db + o * P, *zr = zb + o * P;
                    double sh_ = zshift[o], l[16];
                    for (int j = 0; j < 16; j++) l[j] = 0.0;
                    int64_t p = 0;
                    for (; p + 16 <= P; p += 16)
                        for (int j = 0; j < 16; j++) l[j] += (double)dr[p + j] * ((double)zr[p + j] - sh_);
                    double acc = 0.0;
                    for (int j = 0; j < 16; j++) acc += l[j];
                    for (; p < P; p++) acc += (double)dr[p] * (zr[p] - sh_);
                    zacc[o] = acc;
                }
            }
            for (int64_t p = 0; p < P; p++) {
                float *row = dt + p * opad;
                if (dscale)
                    for (int64_t o = 0; o < O; o++) { float v = db[o * P + p]; row[o] = v * dscale[o]; dsacc[o] += v; }
                else
                    for (int64_t o = 0; o < O; o++) { float v = db[o * P + p]; row[o] = v; dsacc[o] += v; }
                for (int64_t o = O; o < opad; o++) row[o] = 0.0f;
            }
            if (dsum)
                for (int64_t o = 0; o < O; o++) dsum[b * O + o] = dsacc[o];
            if (zdot)
                for (int64_t o = 0; o < O; o++) zdot[b * O + o] = zacc[o];
            for (int64_t o = 0; o < opad; o++) dacc[o] = 0.0;
            vstats st = {V_ZERO(), V_ZERO(), V_ZERO(), V_SET1(-INFINITY), V_SET1(INFINITY)};
            double sums[3] = {0, 0, 0};
            tilectx t = {only_s2, 0, scale ? sc : 0, 0, dacc, opad, O, &st};
            if (t33) {
                int mc = nv == 1 && C > 1 ? 2 : 1;
                for (int64_t c0 = 0; c0 < C; c0 += mc) {
                    int nc = C - c0 < mc ? (int)(C - c0) : mc;
                    const float *ch[2];
                    for (int c = 0; c < mc; c++) ch[c] = xp + (c0 + (c < nc ? c : 0)) * Hp * Wp;
                    for (int64_t o0 = 0; o0 < opad; o0 += nr) {
                        t.pen = has_pad && o0 + nr == opad ? pen_last : 0;
                        t.scale = scale ? sc + o0 : 0;
                        t.wt = wt ? wt + c0 * 9 * O + o0 : 0;
                        t.dot = dacc + o0;
                        if (nv == 1 && mc == 2) tile_t1(ch, 9 * nc, Wp, dt + o0, off, P, &t);
                        else if (nv == 1) tile_t1s(ch, 9, Wp, dt + o0, off, P, &t);
                        else tile_t2(ch, 9 * nc, Wp, dt + o0, off, P, &t);
                    }
                    flush(&st, sums);
                }
            } else {
                int mr = nv == 4 ? 6 : 12;
                for (int64_t k0 = 0; k0 < Ksel; k0 += mr) {
                    int n = Ksel - k0 < mr ? (int)(Ksel - k0) : mr;
                    const float *xr[12];
                    for (int r = 0; r < mr; r++) {
                        int64_t k = k0 + (r < n ? r : 0);
                        xr[r] = xp + rowoff[rowsel ? rowsel[k] : k];
                    }
                    for (int64_t o0 = 0; o0 < opad; o0 += nr) {
                        t.pen = has_pad && o0 + nr == opad ? pen_last : 0;
                        t.scale = scale ? sc + o0 : 0;
                        t.wt = wt ? wt + k0 * O + o0 : 0;
                        t.dot = dacc + o0;
                        if (nv == 1) tile_g1(xr, n, dt + o0, off, P, &t);
                        else if (nv == 2) tile_g2(xr, n, dt + o0, off, P, &t);
                        else tile_g4(xr, n, dt + o0, off, P, &t);
                    }
                    flush(&st, sums);
                }
            }
            float tm[2][VL];
            V_STORE(tm[0], st.mx); V_STORE(tm[1], st.mn);
            double mx = -INFINITY, mn = INFINITY;
            for (int l = 0; l < VL; l++) { mx = tm[0][l] > mx ? tm[0][l] : mx; mn = tm[1][l] < mn ? tm[1][l] : mn; }
            for (int64_t s = 0; s < nsingle; s++) {  /* rank-one rows: x[c, h, w] * (scaled) d[:, p] */
                const float *row = dt + single[3 * s] * opad;
                double a1 = 0, a2 = 0, as = 0, dmx = -INFINITY, dmn = INFINITY;
                for (int64_t c = 0; c < O; c++) {
                    double v = row[c];
                    a1 += fabs(v); a2 += v * v; as += v;
                    dmx = v > dmx ? v : dmx; dmn = v < dmn ? v : dmn;
                }
                const float *px = xp + (single[3 * s + 1] + ph) * Wp + single[3 * s + 2] + pw;
                for (int64_t c = 0; c < C; c++) {
                    double u = px[c * Hp * Wp], hi_ = u * dmx, lo_ = u * dmn;
                    sums[0] += fabs(u) * a1; sums[1] += u * u * a2; sums[2] += u * as;
                    if (hi_ < lo_) { double t_ = hi_; hi_ = lo_; lo_ = t_; }
                    mx = hi_ > mx ? hi_ : mx; mn = lo_ < mn ? lo_ : mn;
                }
            }
            if (nzero > 0) { mx = mx > 0 ? mx : 0; mn = mn < 0 ? mn : 0; }
            double *o = out + b * 5;
            o[0] = sums[0]; o[1] = sums[1]; o[2] = mx; o[3] = mn; o[4] = sums[2];
            if (dot)
                for (int64_t c = 0; c < O; c++) dot[b * O + c] = dacc[c];
        }
        free(xp);
        free(dsacc);
        free(dacc);
    }
    free(off);
    free(sc);
    return failed ? -1 : 0;
}

/* The version the loader checks, so a stale build of an older source is never used. */
int gv_kernel_version(void) { return GV_KERNEL_VERSION; }

/* 1 if built with OpenMP (the kernel then parallelises itself). */
int gv_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
