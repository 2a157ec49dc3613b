/* What rnnkit's C kernels share (the LSTM's lstm.h and its two sources, the GRU's gru.h and its
 * two): oneDNN's sgemm, the activations by id (rnnkit/fast/compiled.py's ACTIVATIONS) and their
 * derivatives, and the row plan of a packed variable-length batch (see lstm.h). */
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
/* set by rk_set_gemm (lstm_forward.c, gru_forward.c); hidden, so that each library (LSTM, GRU)
 * reads its own even where both are loaded */
extern sgemm_fn rk_gemm __attribute__((visibility("hidden")));

enum { ACT_TANH, ACT_SIGMOID, ACT_RELU, ACT_LINEAR, ACT_HARD_SIGMOID, ACT_HARD_SIGMOID_K2,
       ACT_SOFTSIGN };

/* v clamped to [lo, hi]; NaN stays NaN (as torch.clamp), and unlike fminf/fmaxf it vectorizes
 * without -ffinite-math-only. */
static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline float act_f(int id, float v) {
    switch (id) {
    case ACT_TANH: return tanhf(v);
    case ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    case ACT_RELU: return v > 0.0f ? v : 0.0f;
    case ACT_HARD_SIGMOID: return clampf(v + 3.0f, 0.0f, 6.0f) / 6.0f;
    case ACT_HARD_SIGMOID_K2: return clampf(0.2f * v + 0.5f, 0.0f, 1.0f);
    case ACT_SOFTSIGN: return v / (1.0f + fabsf(v));
    default: return v;
    }
}

/* The derivative at each of n outputs y of an activation other than tanh and sigmoid, into d
 * (a loop per activation, so that each one vectorizes). Not inlined, nor is act_other: each
 * inlined copy of these loops cost the compiler time (the first build of a library took about
 * twice as long), and a call costs little beside a row's loop. */
static __attribute__((noinline, unused)) void deriv_other(int id, const float *y, float *d,
                                                          int64_t n) {
    switch (id) {
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

/* The derivative of any activation: tanh's and sigmoid's inlined (the common cells; the
 * compiler then takes the test on id out of a loop over rows), the others called. */
static inline void deriv_n(int id, const float *y, float *d, int64_t n) {
    if (id == ACT_TANH) for (int64_t j = 0; j < n; j++) d[j] = 1.0f - y[j] * y[j];
    else if (id == ACT_SIGMOID) for (int64_t j = 0; j < n; j++) d[j] = y[j] * (1.0f - y[j]);
    else deriv_other(id, y, d, n);
}

static __attribute__((noinline, unused)) void act_other(int id, float *v, int64_t n) {
    if (id != ACT_LINEAR)
        for (int64_t j = 0; j < n; j++) v[j] = act_f(id, v[j]);
}

/* An activation in place over n values, tanh and sigmoid inlined (as deriv_n). */
static inline void act_n(int id, float *v, int64_t n) {
    if (id == ACT_TANH) for (int64_t j = 0; j < n; j++) v[j] = tanhf(v[j]);
    else if (id == ACT_SIGMOID) for (int64_t j = 0; j < n; j++) v[j] = 1.0f / (1.0f + expf(-v[j]));
    else act_other(id, v, n);
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

/* The final h of each sequence of a packed batch: its output (y [N, P]) at its last step, or
 * h0 for length 0. */
static inline void final_h(const int64_t *lengths, const int64_t *off, int64_t B, int64_t T,
                           int64_t P, const float *y, const float *h0, float *hT) {
    for (int64_t r = 0; r < B; r++) {
        const int64_t n = lengths ? lengths[r] : T;
        memcpy(hT + r * P, n > 0 ? y + (off[n - 1] + r) * P : h0 + r * P, P * sizeof(float));
    }
}

/* C = alpha op(A) op(B) + beta C (rk_gemm's arguments), for the input gradient at the end of a
 * backward (dx = dz W^T, B transposed). oneDNN 3.2 splits that product between two threads
 * badly once K (the gate count) reaches 512 or so; here each thread runs the one-thread sgemm
 * (oneDNN runs on the calling thread inside a parallel region) on its own rows of C, or its
 * columns where C has more of those. Measured on 2 threads (benchmarks/RESULTS.md, session 10):
 * LSTM dx at H256 and 3200 tokens 4.5 -> 3.6 ms, at H512 18.6 -> 14.1; below H128 and for the
 * weight gradients (A transposed) no change, so they stay one call. Returns 0 or a dnnl
 * status. */
#define GEMM_SPLIT_MIN ((int64_t)1 << 20)  /* multiply-adds below which one call is as fast */
static inline int gemm_split(char ta, char tb, int64_t M, int64_t N, int64_t K, float alpha,
                             const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                             float *C, int64_t ldc) {
    if (omp_get_max_threads() < 2 || omp_in_parallel() || M * N * K < GEMM_SPLIT_MIN)
        return rk_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    const int rows = M >= N;
    const int64_t len = rows ? M : N;
    int st = 0;
    #pragma omp parallel
    {
        const int th = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t lo = len * th / nt / 16 * 16;
        const int64_t hi = th + 1 == nt ? len : len * (th + 1) / nt / 16 * 16;
        int err = 0;
        if (hi > lo && rows)
            err = rk_gemm(ta, tb, hi - lo, N, K, alpha, ta == 'N' ? A + lo * lda : A + lo, lda,
                          B, ldb, beta, C + lo * ldc, ldc);
        else if (hi > lo)
            err = rk_gemm(ta, tb, M, hi - lo, K, alpha, A, lda, tb == 'N' ? B + lo : B + lo * ldb,
                          ldb, beta, C + lo, ldc);
        if (err) {
            #pragma omp atomic write
            st = err;
        }
    }
    return st;
}

/* out [P, cols] = h_in^T dz over a packed batch's N rows (dz's row stride ldz), h_in being each
 * row's previous h: the weight gradient of a recurrent product. A variable-length batch needs
 * the copy h_in [N, P] (its steps' rows do not line up with the last step's); without lengths
 * the first B rows' previous h is h0 and every other row's is y's row B before it, so two
 * products read them where they are (h_in unused). Returns 0 or a dnnl status. */
static inline int prev_h_product(const int64_t *lengths, int64_t N, int64_t B, int64_t P,
                                 int64_t cols, const float *h0, const float *y,
                                 const float *h_in, const float *dz, int64_t ldz, float *out,
                                 int64_t ldo) {
    if (lengths) return rk_gemm('T', 'N', P, cols, N, 1.0f, h_in, P, dz, ldz, 0.0f, out, ldo);
    int st = rk_gemm('T', 'N', P, cols, B, 1.0f, h0, P, dz, ldz, 0.0f, out, ldo);
    if (!st && N > B) st = rk_gemm('T', 'N', P, cols, N - B, 1.0f, y, P, dz + B * ldz, ldz, 1.0f,
                                   out, ldo);
    return st;
}

/* ---- Batches split between threads ----
 * The sequences of a batch never meet, so each thread can run its own rows through the whole
 * sequence with no hand-off between steps: a thread owns a fixed range of the packed order's
 * sequences (balanced by tokens) and runs their recurrent products (oneDNN's sgemm runs on the
 * calling thread inside a parallel region) and gate passes step after step. Every thread reads
 * all of U each step, so this pays where U stays in each core's cache; elsewhere each step's
 * product is one sgemm call over all rows, split between the threads by oneDNN. */
#define SPLIT_ROWS 8              /* at least this many rows per thread ... */
#define SPLIT_SHARE (256 << 10)   /* ... and recurrent matrices of at most this many bytes */

/* Whether a batch of B rows whose recurrent matrices take u_bytes is split between threads. */
static inline int split_rows(int64_t B, int64_t u_bytes) {
    const int nt = omp_get_max_threads();
    return nt > 1 && B >= (int64_t)SPLIT_ROWS * nt && u_bytes <= SPLIT_SHARE;
}

/* The first row of thread th of nt: lengths (sorted longest first; NULL: all equal) split so
 * that each thread has about as many tokens. */
static inline int64_t row_start(const int64_t *lengths, int64_t B, int th, int nt) {
    if (th >= nt) return B;
    if (!lengths) return B * th / nt;
    int64_t total = 0, sum = 0, r = 0;
    for (int64_t q = 0; q < B; q++) total += lengths[q];
    while (r < B && sum * nt < total * th) sum += lengths[r++];
    return r;
}

/* Rows [lo, hi) of step t of a call (cfg, call: the kernel's configuration and buffers) for
 * thread th inside a parallel region, or -1: all rows, the gate passes split between threads.
 * Returns 0 or a dnnl status. */
typedef int (*thread_step)(const void *cfg, const void *call, int64_t t, int64_t lo,
                           int64_t hi, int th);

/* Each thread's own rows of a T-step, B-row batch through every step (backward: last step
 * first). Returns 0 or the status of a failed step. */
static inline int run_split(int64_t T, int64_t B, const int64_t *lengths, const int64_t *active,
                            int backward, thread_step step, const void *cfg, const void *call) {
    int st = 0;
    #pragma omp parallel
    {
        const int th = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t lo = row_start(lengths, B, th, nt), hi = row_start(lengths, B, th + 1, nt);
        int err = 0;
        for (int64_t q = 0; q < T && !err; q++) {
            const int64_t t = backward ? T - 1 - q : q;
            if (active[t] > lo) err = step(cfg, call, t, lo, active[t] < hi ? active[t] : hi, th);
        }
        if (err) {
            #pragma omp atomic write
            st = err;
        }
    }
    return st;
}

/* ---- Keras dropout: a mask per block of a weight matrix's columns ----
 * mask [rows, nb, n]: block j (columns j*H .. (j+1)*H of a matrix of nb*H columns) reads
 * v ⊙ mask j. The rows of step t of a packed batch (off, active: plan_rows) are the sorted
 * batch's rows 0 .. active[t], so a step's row r takes mask row r. Recurrent dropout masks h
 * before the recurrent product (the LSTM's lstm.h, lstm_forward.c, lstm_backward.c; the GRU's gru.h, gru_forward.c, gru_backward.c); with it, input dropout masks x
 * per block before the input projection (masked_projection). */

static inline const float *mask_row(const float *mask, int64_t nb, int64_t n, int64_t r,
                                    int j) {
    return mask + (r * nb + j) * n;
}

/* out rows [lo, hi) = v rows ⊙ block j's mask rows (row stride n). */
static inline void masked_rows(const float *v, const float *mask, int64_t nb, int64_t n,
                               int64_t lo, int64_t hi, int j, float *out) {
    for (int64_t r = lo; r < hi; r++) {
        const float *restrict vr = v + r * n, *restrict mr = mask_row(mask, nb, n, r, j);
        float *restrict o = out + r * n;
        for (int64_t q = 0; q < n; q++) o[q] = vr[q] * mr[q];
    }
}

/* out rows [lo, hi) = (assign) or += part rows ⊙ block j's mask rows. */
static inline void add_masked_rows(const float *part, const float *mask, int64_t nb, int64_t n,
                                   int64_t lo, int64_t hi, int j, int assign, float *out) {
    for (int64_t r = lo; r < hi; r++) {
        const float *restrict pr = part + r * n, *restrict mr = mask_row(mask, nb, n, r, j);
        float *restrict o = out + r * n;
        if (assign) for (int64_t q = 0; q < n; q++) o[q] = pr[q] * mr[q];
        else for (int64_t q = 0; q < n; q++) o[q] += pr[q] * mr[q];
    }
}

/* Block j of a step's recurrent product with recurrent dropout, rows [lo, hi): out block j
 * (ldo) = beta out + (h ⊙ mask j) U_j (U [n, ldu]), through buf [rows, n]. Returns 0 or a
 * dnnl status. */
static inline int masked_product(const float *h, const float *U, int64_t ldu, const float *mask,
                                 int64_t nb, int64_t n, int64_t H, int64_t lo, int64_t hi, int j,
                                 float beta, float *out, int64_t ldo, float *buf) {
    masked_rows(h, mask, nb, n, lo, hi, j, buf);
    return rk_gemm('N', 'N', hi - lo, H, n, 1.0f, buf + lo * n, n, U + j * H, ldu, beta,
                   out + lo * ldo + j * H, ldo);
}

/* masked_product for blocks j0..j1-1, block j through buf + j * rows * n. split: the blocks
 * between threads, one-thread products in one parallel region (measured for the LSTM's four,
 * benchmarks/RESULTS.md session 14; not the GRU's three); else one block after another, each
 * product on every thread. Returns 0 or a dnnl status. */
static inline int masked_products(const float *h, const float *U, int64_t ldu,
                                  const float *mask, int64_t nb, int64_t n, int64_t H,
                                  int64_t rows, int64_t lo, int64_t hi, int j0, int j1,
                                  float beta, float *out, int64_t ldo, float *buf, int split) {
    int st = 0;
    if (!split || omp_get_max_threads() < 2) {  /* not inside a parallel region: oneDNN would */
        for (int j = j0; j < j1 && !st; j++)     /* then run each product on one thread */
            st = masked_product(h, U, ldu, mask, nb, n, H, lo, hi, j, beta, out, ldo,
                                buf + j * rows * n);
        return st;
    }
    #pragma omp parallel for schedule(static)
    for (int j = j0; j < j1; j++) {
        int err = masked_product(h, U, ldu, mask, nb, n, H, lo, hi, j, beta, out, ldo,
                                 buf + j * rows * n);
        if (err) {
            #pragma omp atomic write
            st = err;
        }
    }
    return st;
}

/* Its backward for d(h), rows [lo, hi): dh (assign: =, else +=) the sum over blocks j0..j1-1
 * of (dprod_j Ut_j) ⊙ mask j, dprod [.., lddp] the gradient of the products, Ut [nb*H, n] the
 * transposed matrix. buf and split as masked_products. Returns 0 or a dnnl status. */
static inline int masked_products_back(const float *dprod, int64_t lddp, const float *Ut,
                                       const float *mask, int64_t nb, int64_t n, int64_t H,
                                       int64_t rows, int64_t lo, int64_t hi, int j0, int j1,
                                       int assign, float *dh, float *buf, int split) {
    int st = 0;
    if (!split || omp_get_max_threads() < 2) {  /* as masked_products */
        for (int j = j0; j < j1 && !st; j++)
            st = rk_gemm('N', 'N', hi - lo, n, H, 1.0f, dprod + lo * lddp + j * H, lddp,
                         Ut + j * H * n, n, 0.0f, buf + j * rows * n + lo * n, n);
    } else {
        #pragma omp parallel for schedule(static)
        for (int j = j0; j < j1; j++) {
            int err = rk_gemm('N', 'N', hi - lo, n, H, 1.0f, dprod + lo * lddp + j * H, lddp,
                              Ut + j * H * n, n, 0.0f, buf + j * rows * n + lo * n, n);
            if (err) {
                #pragma omp atomic write
                st = err;
            }
        }
    }
    if (st) return st;
    #pragma omp parallel for schedule(static) if ((hi - lo) * n >= PARALLEL_MIN)
    for (int64_t r = lo; r < hi; r++)
        for (int j = j0; j < j1; j++)
            add_masked_rows(buf + j * rows * n, mask, nb, n, r, r + 1, j, assign && j == j0, dh);
    return 0;
}

/* The weight gradient of masked products over a packed batch's N rows: out block j (ldo) =
 * (h_in ⊙ mask j)^T dprod_j (ldd) for blocks j0..j1-1, h_in each row's previous h (h0's rows
 * at the first step, y's [N, n] at the step before after that); step t's mask at mask +
 * t * step (step 0: one mask for every step). Returns 0, a dnnl status or -1 (out of memory). */
static inline int masked_prev_h_product(const float *mask, int64_t step, int64_t nb, int64_t n,
                                        int64_t H, const int64_t *active, const int64_t *off,
                                        int64_t T, const float *h0, const float *y,
                                        const float *dprod, int64_t ldd, int j0, int j1,
                                        float *out, int64_t ldo) {
    const int64_t N = off[T];
    float *hj = malloc((size_t)(N > 0 ? N : 1) * n * sizeof(float));
    if (!hj) return -1;
    int st = 0;
    for (int j = j0; j < j1 && !st; j++) {
        for (int64_t t = 0; t < T; t++)
            masked_rows(t == 0 ? h0 : y + off[t - 1] * n, mask + t * step, nb, n, 0,
                        active[t], j, hj + off[t] * n);
        st = rk_gemm('T', 'N', n, H, N, 1.0f, hj, n, dprod + j * H, ldd, 0.0f, out + j * H, ldo);
    }
    free(hj);
    return st;
}

/* The input projection with input masks (xmask [B, nb, D]), block j (x ⊙ mask j) W_j:
 * forward (dz NULL), into gates [N, nb*H]; backward, from the gates' gradient dz [N, nb*H],
 * dW block j = (x ⊙ mask j)^T dz_j and (dx not NULL) dx = the sum over blocks of
 * (dz_j W_j^T) ⊙ mask j. Returns 0, a dnnl status or -1 (out of memory). */
static inline int masked_projection(const float *x, const float *W, const float *xmask,
                                    const int64_t *active, const int64_t *off, int64_t T,
                                    int64_t D, int64_t H, int64_t nb, float *gates,
                                    const float *dz, float *dW, float *dx) {
    const int64_t N = off[T], G = nb * H;
    float *buf = malloc((size_t)(N > 0 ? N : 1) * D * sizeof(float));
    if (!buf) return -1;
    int st = 0;
    for (int j = 0; j < nb && !st; j++) {
        for (int64_t t = 0; t < T; t++)
            masked_rows(x + off[t] * D, xmask, nb, D, 0, active[t], j, buf + off[t] * D);
        if (!dz) {
            st = rk_gemm('N', 'N', N, H, D, 1.0f, buf, D, W + j * H, G, 0.0f, gates + j * H, G);
            continue;
        }
        st = rk_gemm('T', 'N', D, H, N, 1.0f, buf, D, dz + j * H, G, 0.0f, dW + j * H, G);
        if (st || !dx) continue;
        st = gemm_split('N', 'T', N, D, H, 1.0f, dz + j * H, G, W + j * H, G, 0.0f, buf, D);
        for (int64_t t = 0; t < T && !st; t++)
            add_masked_rows(buf + off[t] * D, xmask, nb, D, 0, active[t], j, j == 0,
                            dx + off[t] * D);
    }
    free(buf);
    return st;
}

/* out [G] = the column sums of m [N, G] (a bias's gradient from its gates'), as one product
 * with a row of ones. Returns 0, a dnnl status or -1 (out of memory). */
static inline int column_sums(const float *m, int64_t N, int64_t G, float *out) {
    float *ones = malloc((N > 0 ? N : 1) * sizeof(float));
    if (!ones) return -1;
    for (int64_t j = 0; j < N; j++) ones[j] = 1.0f;
    int st = 0;
    if (N > 0) st = rk_gemm('N', 'N', 1, G, N, 1.0f, ones, N, m, G, 0.0f, out, G);
    else memset(out, 0, G * sizeof(float));
    free(ones);
    return st;
}

#endif
