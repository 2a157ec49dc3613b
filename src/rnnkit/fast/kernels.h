/* What rnnkit's C kernels share (lstm_kernel.c, gru_kernel.c): oneDNN's sgemm, the
 * activations by id (rnnkit/fast/compiled.py's ACTIVATIONS) and their derivatives, and the row
 * plan of a packed variable-length batch (see lstm_kernel.c). */
#ifndef RNNKIT_KERNELS_H
#define RNNKIT_KERNELS_H

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 35)
/* glibc's vector math (libmvec) has SIMD versions of these; saying so lets the loops below
 * vectorize without -ffast-math (which would change the whole process's handling of
 * subnormal floats when the library loads). */
extern float expf(float) __attribute__((__simd__("notinbranch")));
extern float tanhf(float) __attribute__((__simd__("notinbranch")));
#endif

#define PARALLEL_MIN 4096  /* gate values per step below which the rows run on one thread */

typedef int (*sgemm_fn)(char, char, int64_t, int64_t, int64_t, float, const float *, int64_t,
                        const float *, int64_t, float, float *, int64_t);
extern sgemm_fn rk_gemm;  /* set by rk_set_gemm (lstm_kernel.c) */

enum { ACT_TANH, ACT_SIGMOID, ACT_RELU, ACT_LINEAR, ACT_HARD_SIGMOID, ACT_HARD_SIGMOID_K2,
       ACT_SOFTSIGN };

static inline float act_f(int id, float v) {
    switch (id) {
    case ACT_TANH: return tanhf(v);
    case ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    case ACT_RELU: return v > 0.0f ? v : 0.0f;
    case ACT_HARD_SIGMOID: return fminf(fmaxf(v + 3.0f, 0.0f), 6.0f) / 6.0f;
    case ACT_HARD_SIGMOID_K2: return fminf(fmaxf(0.2f * v + 0.5f, 0.0f), 1.0f);
    case ACT_SOFTSIGN: return v / (1.0f + fabsf(v));
    default: return v;
    }
}

/* The derivative at each of n outputs y of an activation, into d (a loop per activation, so
 * that each one vectorizes). */
static inline void deriv_n(int id, const float *y, float *d, int64_t n) {
    switch (id) {
    case ACT_TANH: for (int64_t j = 0; j < n; j++) d[j] = 1.0f - y[j] * y[j]; break;
    case ACT_SIGMOID: for (int64_t j = 0; j < n; j++) d[j] = y[j] * (1.0f - y[j]); break;
    case ACT_RELU: for (int64_t j = 0; j < n; j++) d[j] = y[j] > 0.0f ? 1.0f : 0.0f; break;
    case ACT_HARD_SIGMOID:
        for (int64_t j = 0; j < n; j++) d[j] = (y[j] > 0.0f && y[j] < 1.0f) ? 1.0f / 6.0f : 0.0f;
        break;
    case ACT_HARD_SIGMOID_K2:
        for (int64_t j = 0; j < n; j++) d[j] = (y[j] > 0.0f && y[j] < 1.0f) ? 0.2f : 0.0f;
        break;
    case ACT_SOFTSIGN:
        for (int64_t j = 0; j < n; j++) { float a = 1.0f - fabsf(y[j]); d[j] = a * a; }
        break;
    default: for (int64_t j = 0; j < n; j++) d[j] = 1.0f;
    }
}

static inline void act_n(int id, float *v, int64_t n) {
    switch (id) {
    case ACT_TANH: for (int64_t j = 0; j < n; j++) v[j] = tanhf(v[j]); break;
    case ACT_SIGMOID: for (int64_t j = 0; j < n; j++) v[j] = 1.0f / (1.0f + expf(-v[j])); break;
    case ACT_LINEAR: break;
    default: for (int64_t j = 0; j < n; j++) v[j] = act_f(id, v[j]);
    }
}

/* Rows per step and where each step's rows start: active[T], then off[T + 1] (off[T] = N).
 * NULL when out of memory. */
static inline int64_t *plan_rows(const int64_t *lengths, int64_t B, int64_t T) {
    int64_t *plan = malloc((2 * T + 1) * sizeof(int64_t));
    if (!plan) return NULL;
    int64_t *active = plan, *off = plan + T, a = B;
    off[0] = 0;
    for (int64_t t = 0; t < T; t++) {
        if (lengths) while (a > 0 && lengths[a - 1] <= t) a--;
        active[t] = a;
        off[t + 1] = off[t] + a;
    }
    return plan;
}

/* The LSTM kernels' configuration and saved buffers (lstm_kernel.c, lstm_units.c). */
typedef struct {
    int64_t T, B, D, H, P;
    int32_t act, ract;           /* activation ids of the candidate/cell and of the gates */
    int32_t peephole, proj, layer_norm;
    float cell_clip, proj_clip;  /* <= 0: no clipping */
    float forget_bias, eps;      /* layer norm only (forget_bias is folded into b otherwise) */
} rk_cfg;

typedef struct {               /* what the forward pass keeps for the backward pass */
    float *gates;              /* [T, B, 4H] activated i, f, g, o */
    float *cells;              /* [T, B, H] new c */
    float *act_c;              /* [T, B, H] act(c) */
    float *m;                  /* [T, B, H] act(c) * o before projection (projection only) */
    float *xhat;               /* [T, B, 5H] normalized values (layer norm only) */
    float *rstd;               /* [T, B, 5] (layer norm only) */
} rk_saved;

/* Threads for the unit-sliced LSTM (lstm_units.c): >1 where it runs (no layer norm, no
 * projection, several threads, at least 16 units each). */
int lstm_units_threads(const rk_cfg *k);
int lstm_forward_units(const rk_cfg *k, const int64_t *lengths, const float *x, const float *h0,
                       const float *c0, const float *W, const float *U, const float *b,
                       const float *peep, float *y, float *hT, float *cT, rk_saved *s,
                       float *scratch);
int lstm_backward_units(const rk_cfg *k, const int64_t *lengths, const float *x,
                        const float *h0, const float *c0, const float *W, const float *Ut,
                        const float *peep, const float *y, const rk_saved *s, const float *dy,
                        float *dh, float *dc, float *dx, float *dW, float *dU, float *db,
                        float *dpeep, float *scratch);

#endif
