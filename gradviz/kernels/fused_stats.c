/* Fused partial sums of per-sample gradient rows: ONE pass computes, for each segment of a row,
 *   s1 = sum |g|,  s2 = sum g^2,  mx = max g,  mn = min g,  sm = sum g
 * (the five numbers the six gradient statistics are finished from; gradviz/reductions.py).
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
 * Threads: OpenMP when the compiler has it (the process's libgomp is the one PyTorch already
 * loaded, so both share one thread pool); otherwise gradviz splits the index range itself.
 *
 * Built once by gradviz at run time with the system C compiler (cc -O3 -march=native -shared).
 */
#include <math.h>
#include <stdint.h>
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

/* A version number the loader checks, so a stale build of an older source is never used. */
int gv_kernel_version(void) { return 3; }

/* 1 if built with OpenMP (the kernel then parallelises itself). */
int gv_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
