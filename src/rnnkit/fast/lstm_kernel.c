/* rnnkit's own fused LSTM: the variants oneDNN has no primitive for (cell_clip, proj_clip,
 * layer normalization, other activations), forward and backward over a whole sequence in one
 * call. Compiled on first use by rnnkit/fast/compiled.py and loaded with ctypes; every matrix
 * product goes through oneDNN's dnnl_sgemm (row-major), whose address the loader passes in.
 *
 * Layouts (row-major, float32): W [D, 4H]; U [P, 4H]; b [4H]; the gate blocks of i, f, g, o
 * (Keras order) at blocks order[0..3] of these and of the gate buffers (TF1 kernels: 0, 2, 1, 3);
 * peepholes [3, H] (i, f, o); projection Pw [H, P]; layer norm gamma/beta [5, H] (i, f, g, o, c);
 * states h [B, P], c [B, H]. Sequences are packed: with lengths (sorted longest first), step t
 * runs the first active(t) sequences, and its rows of x [N, D], y [N, P] and of every per-step
 * buffer follow those of step t - 1 (N = the batch's tokens; without lengths, every step has
 * all B rows and x is [T, B, D]). So every product, the input projection and the weight
 * gradients included, costs the tokens, not T * B. The equations are
 * rnnkit/cells/equations.py's lstm and layer_norm_lstm. The steps share the threads in one of
 * three ways, chosen once per call: each step's product over all its rows (oneDNN splits it)
 * and its rows' gate passes split between threads; split batches (each thread its own
 * sequences for the whole call); small batches (each thread its own units). Dropout masks:
 * Keras's per gate block (hmask, xmask), or TF1 state dropout's one mask on h for all blocks
 * (shared), the same for every step or one per step (per_step).
 */
#include "kernels.h"

sgemm_fn rk_gemm;

void rk_set_gemm(void *fn) { rk_gemm = (sgemm_fn)fn; }

typedef struct {
    int64_t T, B, D, H, P;
    int32_t act, ract;           /* activation ids of the candidate/cell and of the gates */
    int32_t peephole, proj, layer_norm;
    float cell_clip, proj_clip;  /* <= 0: no clipping */
    float forget_bias, eps;      /* layer norm only (forget_bias is folded into b otherwise) */
    int32_t order[4];            /* the block of W's columns holding i, f, g, o */
    const float *xmask;          /* Keras input dropout with recurrent dropout: [B, 4, D], one
                                    mask per block of W's columns (kernels.h); NULL: none */
    const float *hmask;          /* Keras recurrent dropout: [B, 4, P], one mask per block of
                                    U's columns (h ⊙ mask[:, j]) U_j; NULL: none */
    int32_t per_step;            /* hmask is [T, ...], step t's masks at t (TF1 state
                                    dropout without variational_recurrent) */
    int32_t shared;              /* hmask is one mask for all four blocks, [B, P] (per step
                                    [T, B, P]): one product, h ⊙ mask U (state dropout) */
} rk_cfg;

/* Where gate q (0..3: i, f, g, o) starts in a row of 4H gate values. */
static inline int64_t at_gate(const rk_cfg *k, int q) { return k->order[q] * k->H; }

/* hmask's blocks: 4, or 1 (shared) over all 4H columns. */
static inline int mask_blocks(const rk_cfg *k) { return k->shared ? 1 : 4; }

/* Floats between step t's hmask and step t+1's (0: one mask for every step). */
static inline int64_t mask_step(const rk_cfg *k) {
    return k->per_step ? k->B * mask_blocks(k) * k->P : 0;
}

typedef struct {               /* what the forward pass keeps for the backward pass */
    float *gates;              /* [T, B, 4H] activated i, f, g, o */
    float *cells;              /* [T, B, H] new c */
    float *act_c;              /* [T, B, H] act(c) */
    float *m;                  /* [T, B, H] act(c) * o before projection (projection only) */
    float *xhat;               /* [T, B, 5H] normalized values (layer norm only) */
    float *rstd;               /* [T, B, 5] (layer norm only) */
} rk_saved;

/* y = (x - mean) * rstd * gamma + beta over n values; keeps xhat and rstd when asked. The sums
 * are float, vectorized (omp simd reductions; the two-pass variance keeps them accurate). */
static void norm(float *restrict v, int64_t n, const float *restrict gamma,
                 const float *restrict beta, float eps, float *restrict xhat, float *rstd) {
    float s = 0.0f, q = 0.0f;
    #pragma omp simd reduction(+:s)
    for (int64_t j = 0; j < n; j++) s += v[j];
    const float mean = s / n;
    #pragma omp simd reduction(+:q)
    for (int64_t j = 0; j < n; j++) { const float d = v[j] - mean; q += d * d; }
    const float r = 1.0f / sqrtf(q / n + eps);
    if (xhat)
        for (int64_t j = 0; j < n; j++) xhat[j] = (v[j] - mean) * r;
    for (int64_t j = 0; j < n; j++) v[j] = (v[j] - mean) * r * gamma[j] + beta[j];
    if (rstd) *rstd = r;
}

/* Gradient through norm: dv holds d(output) on entry and d(input) on exit. */
static void norm_back(float *restrict dv, int64_t n, const float *restrict gamma,
                      const float *restrict xhat, float rstd, float *restrict dgamma,
                      float *restrict dbeta) {
    float s1 = 0.0f, s2 = 0.0f;
    #pragma omp simd reduction(+:s1, s2)
    for (int64_t j = 0; j < n; j++) {
        const float dx = dv[j] * gamma[j];
        dgamma[j] += dv[j] * xhat[j];
        dbeta[j] += dv[j];
        s1 += dx;
        s2 += dx * xhat[j];
    }
    const float m1 = s1 / n, m2 = s2 / n;
    for (int64_t j = 0; j < n; j++) dv[j] = rstd * (dv[j] * gamma[j] - m1 - xhat[j] * m2);
}

/* One row of one step: pre-activation gates z [4H] (overwritten by the activated gates),
 * previous cell c_prev, new cell into c_new, act(c) into ac, act(c) * o into m; xhat, rstd:
 * the layer norms' values for backward, or NULL (inference). */
static void row_forward(const rk_cfg *k, float *z, const float *c_prev, float *c_new, float *ac,
                        float *m, const float *peep, const float *gamma, const float *beta,
                        float *xhat, float *rstd) {
    const int64_t H = k->H;
    float *i = z + at_gate(k, 0), *f = z + at_gate(k, 1), *g = z + at_gate(k, 2);
    float *o = z + at_gate(k, 3);
    if (k->layer_norm) {
        for (int q = 0; q < 4; q++)
            norm(z + at_gate(k, q), H, gamma + q * H, beta + q * H, k->eps,
                 xhat ? xhat + q * H : NULL, rstd ? rstd + q : NULL);
        for (int64_t j = 0; j < H; j++) f[j] += k->forget_bias;
    }
    if (k->peephole)
        for (int64_t j = 0; j < H; j++) { i[j] += peep[j] * c_prev[j]; f[j] += peep[H + j] * c_prev[j]; }
    act_n(k->ract, i, H);
    act_n(k->ract, f, H);
    act_n(k->act, g, H);
    for (int64_t j = 0; j < H; j++) c_new[j] = f[j] * c_prev[j] + i[j] * g[j];
    if (k->layer_norm)
        norm(c_new, H, gamma + 4 * H, beta + 4 * H, k->eps, xhat ? xhat + 4 * H : NULL,
             rstd ? rstd + 4 : NULL);
    if (k->cell_clip > 0.0f) {
        const float cc = k->cell_clip;
        for (int64_t j = 0; j < H; j++) c_new[j] = clampf(c_new[j], -cc, cc);
    }
    if (k->peephole)
        for (int64_t j = 0; j < H; j++) o[j] += peep[2 * H + j] * c_new[j];
    act_n(k->ract, o, H);
    memcpy(ac, c_new, H * sizeof(float));
    act_n(k->act, ac, H);
    for (int64_t j = 0; j < H; j++) m[j] = o[j] * ac[j];
}

/* The common LSTM (tanh, sigmoid gates, no layer norm) as one pass over the units, bias
 * added here: the same equations as row_forward, without its separate passes. */
static int standard(const rk_cfg *k) {
    return k->act == ACT_TANH && k->ract == ACT_SIGMOID && !k->layer_norm;
}

/* Its loop, for constant flags (each combination compiles to its own branch-free loop). */
static inline __attribute__((always_inline)) void forward_std_loop(
        const rk_cfg *k, float *z, const float *b, const float *restrict c_prev,
        float *restrict c_new, float *restrict ac, float *restrict m,
        const float *restrict peep, float cc, int64_t j0, int64_t j1, const int has_b,
        const int ph, const int clip) {
    const int64_t H = k->H, oi = at_gate(k, 0), of = at_gate(k, 1), og = at_gate(k, 2);
    const int64_t oo = at_gate(k, 3);
    /* no two of these overlap (nor do the four gate blocks): saying so lets the loop vectorize */
    float *restrict zi_p = z + oi, *restrict zf_p = z + of, *restrict zg_p = z + og;
    float *restrict zo_p = z + oo;
    const float *restrict bi = has_b ? b + oi : NULL, *restrict bf = has_b ? b + of : NULL;
    const float *restrict bg = has_b ? b + og : NULL, *restrict bo = has_b ? b + oo : NULL;
    #pragma omp simd
    for (int64_t j = j0; j < j1; j++) {
        float zi = zi_p[j], zf = zf_p[j], zg = zg_p[j], zo = zo_p[j];
        if (has_b) { zi += bi[j]; zf += bf[j]; zg += bg[j]; zo += bo[j]; }
        const float cp = c_prev[j];
        if (ph) { zi += peep[j] * cp; zf += peep[H + j] * cp; }
        const float i = 1.0f / (1.0f + expf(-zi)), f = 1.0f / (1.0f + expf(-zf)), g = tanhf(zg);
        float c = f * cp + i * g;
        if (clip) c = clampf(c, -cc, cc);
        if (ph) zo += peep[2 * H + j] * c;
        const float o = 1.0f / (1.0f + expf(-zo)), a = tanhf(c);
        zi_p[j] = i; zf_p[j] = f; zg_p[j] = g; zo_p[j] = o;
        c_new[j] = c; ac[j] = a; m[j] = o * a;
    }
}

/* Units [j0, j1) of one row (the state and output pointers are the row's, not offset). */
static void row_forward_std(const rk_cfg *k, float *z, const float *b, const float *c_prev,
                            float *c_new, float *ac, float *m, const float *peep, int64_t j0,
                            int64_t j1) {
    const float cc = k->cell_clip;
    const int flags = (b != NULL) | (k->peephole ? 2 : 0) | (cc > 0.0f ? 4 : 0);
    switch (flags) {
#define CASE(n) case n: forward_std_loop(k, z, b, c_prev, c_new, ac, m, peep, cc, j0, j1, n & 1, n & 2, n & 4); break;
    CASE(0) CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7)
#undef CASE
    }
}


/* ---- Small batches: every thread owns a range of units for the whole sequence ----
 * At batch 1 or 2 a step's recurrent product is a matrix-vector product, bound by reading U
 * (P x 4H), and a call of sgemm per step pays its hand-off between threads on top. Here each
 * thread owns units [u0, u1): the four gate columns of those units, for every step. It packs
 * its columns of U once per call into panels of PANEL columns (each panel [P, w] contiguous,
 * so the reads stream and its share stays in its own core's cache), computes those gates,
 * their units' new c and h, and one barrier per step hands the new h over. Backward mirrors
 * it: a thread's gate gradients give its part of d(h_prev) = dz U^T over all P units (rows
 * of Ut), and after the step's barrier each thread sums the parts for its own units (parts
 * double-buffered by step parity, so one barrier a step suffices); its rows of Ut are packed
 * into panels the same way. The standard LSTM only (tanh, sigmoid, no layer norm; peepholes
 * and cell_clip included), no projection. */
#define SMALL_ROWS 2            /* batch 1 always takes the small-batch path; batch 2 ... */
#define SMALL_SHARE (128 << 10)  /* ... where each thread's share of U is at most this many bytes */
#define PANEL 64

/* Measured (benchmarks/RESULTS.md, 2 threads, B1 T500, in one process against the per-step
 * sgemm), since the panel products keep their sums in registers: forward+backward 6-10% faster
 * at H256-512 (forward 15-25%), no slower at H1024, where U no longer fits the caches. At
 * batch 2 each row reads U again: level with sgemm at H256, faster up to H128. */
static int small_batch(const rk_cfg *k) {
    const int nt = omp_get_max_threads();
    return standard(k) && !k->proj && !k->hmask && nt > 1 &&
           (k->B == 1 || (k->B <= SMALL_ROWS &&
                          k->P * 4 * k->H * (int64_t)sizeof(float) <= (int64_t)SMALL_SHARE * nt));
}

/* Whether a call with this configuration takes the small-batch path (for tests). */
int rk_lstm_small_batch(const rk_cfg *k) { return small_batch(k); }

/* The first unit of thread th of nt (a multiple of 16 floats: no two threads share a cache
 * line of a state row). */
static inline int64_t unit_start(int64_t H, int th, int nt) {
    return th >= nt ? H : (H * th / nt) / 16 * 16;
}

/* out[0, w) += v [K] times a panel [K, w] (w <= PANEL, the panel contiguous): the forward's
 * h U over a thread's columns, and the backward's dz Ut over its rows. A full panel keeps its
 * PANEL sums in eight 8-float vectors (GCC vector extensions: registers on any SIMD width; as
 * a float array, GCC kept them in memory and every step waited on a store and a reload). The
 * sums are the same products added in the same order as the partial panels' scalar loop. */
typedef float vec8 __attribute__((vector_size(32)));

static inline vec8 load8(const float *p) { vec8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, vec8 v) { memcpy(p, &v, sizeof v); }

static void panel_full(int64_t K, const float *restrict v, const float *restrict pan,
                       float *restrict out) {
    vec8 a0 = load8(out), a1 = load8(out + 8), a2 = load8(out + 16), a3 = load8(out + 24);
    vec8 a4 = load8(out + 32), a5 = load8(out + 40), a6 = load8(out + 48), a7 = load8(out + 56);
    for (int64_t q = 0; q < K; q++) {
        const float s = v[q];
        const float *u = pan + q * PANEL;
        a0 += s * load8(u);      a1 += s * load8(u + 8);
        a2 += s * load8(u + 16); a3 += s * load8(u + 24);
        a4 += s * load8(u + 32); a5 += s * load8(u + 40);
        a6 += s * load8(u + 48); a7 += s * load8(u + 56);
    }
    store8(out, a0);      store8(out + 8, a1);  store8(out + 16, a2); store8(out + 24, a3);
    store8(out + 32, a4); store8(out + 40, a5); store8(out + 48, a6); store8(out + 56, a7);
}

static void panel_part(int64_t K, const float *restrict v, const float *restrict pan, int64_t w,
                       float *restrict out) {
    for (int64_t q = 0; q < K; q++) {
        const float s = v[q];
        const float *restrict u = pan + q * w;
        for (int64_t j = 0; j < w; j++) out[j] += s * u[j];
    }
}

static inline void panel_product(int64_t K, const float *v, const float *pan, int64_t w,
                                 float *out) {
    if (w == PANEL) panel_full(K, v, pan, out);
    else panel_part(K, v, pan, w, out);
}

/* The forward steps on the small-batch path (gates hold x W for every step on entry; see
 * rk_lstm_forward for the other buffers). Returns 0 or -1 (out of memory). */
static int forward_small(const rk_cfg *k, const int64_t *active, const int64_t *off,
                         const float *h0, const float *U, const float *b, const float *peep,
                         float *gates, float *y, float *c_run, float *c_step, float *ac_step,
                         rk_saved *s) {
    const int64_t T = k->T, H = k->H, P = k->P, G = 4 * H;
    float *packed = malloc((size_t)P * G * sizeof(float));
    if (!packed) return -1;
    #pragma omp parallel
    {
        const int th = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t u0 = unit_start(H, th, nt), u1 = unit_start(H, th + 1, nt);
        float *mine = packed + 4 * P * u0;  /* this thread's panels: gate by gate, unit order */
        float *pan = mine;
        for (int q = 0; q < 4; q++)
            for (int64_t j = u0; j < u1; j += PANEL) {
                const int64_t w = u1 - j < PANEL ? u1 - j : PANEL, col = at_gate(k, q) + j;
                for (int64_t p = 0; p < P; p++)
                    memcpy(pan + p * w, U + p * G + col, w * sizeof(float));
                pan += P * w;
            }
        for (int64_t t = 0; t < T && active[t] > 0; t++) {
            const int64_t a = active[t], at = off[t];
            const float *h_prev = t == 0 ? h0 : y + off[t - 1] * P;
            for (int64_t r = 0; r < a; r++) {
                const int64_t row = at + r;
                float *z = gates + row * G;
                pan = mine;
                for (int q = 0; q < 4; q++)
                    for (int64_t j = u0; j < u1; j += PANEL) {
                        const int64_t w = u1 - j < PANEL ? u1 - j : PANEL;
                        panel_product(P, h_prev + r * P, pan, w, z + at_gate(k, q) + j);
                        pan += P * w;
                    }
                const float *cp = (s && t > 0) ? s->cells + (off[t - 1] + r) * H : c_run + r * H;
                float *cn = s ? s->cells + row * H : c_step + r * H;
                float *ac = s ? s->act_c + row * H : ac_step + r * H;
                row_forward_std(k, z, b, cp, cn, ac, y + row * P, peep, u0, u1);
                memcpy(c_run + r * H + u0, cn + u0, (u1 - u0) * sizeof(float));
            }
            #pragma omp barrier
        }
    }
    free(packed);
    return 0;
}

/* ---- Batches split between threads (run_split, kernels.h) ---- */
static int split_batch(const rk_cfg *k) {
    return !k->hmask && split_rows(k->B, (k->P * 4 * k->H + (k->proj ? k->H * k->P : 0)) *
                                (int64_t)sizeof(float));
}

/* Whether a call with this configuration splits its batch between threads (for tests). */
int rk_lstm_split_batch(const rk_cfg *k) { return !small_batch(k) && split_batch(k); }

typedef struct {   /* a forward call's inputs and buffers (see rk_lstm_forward) */
    const int64_t *active, *off;
    const float *h0, *U, *b, *peep, *Pw, *gamma, *beta;
    float *gates, *y, *c_run, *c_step, *ac_step, *m_step;
    rk_saved *s;
    float *hbuf;  /* [4, B, P]: h_prev ⊙ each block's (or the shared) mask (hmask only) */
} fwd_call;

/* Rows [lo, hi) of step t (call: a fwd_call): their recurrent product, gates, cells and
 * outputs (projected). th: the calling thread inside a parallel region, or -1: split the rows'
 * gate passes between threads. Returns 0 or a dnnl status. */
static int forward_step(const void *cfg, const void *call, int64_t t, int64_t lo, int64_t hi,
                        int th) {
    const rk_cfg *k = cfg;
    const fwd_call *f = call;
    const int64_t H = k->H, P = k->P, G = 4 * H, n = hi - lo, at = f->off[t];
    const int64_t *off = f->off;
    rk_saved *s = f->s;
    float *z = f->gates + at * G, *yt = f->y + at * P;
    const float *h_prev = t == 0 ? f->h0 : f->y + off[t - 1] * P;
    /* recurrent dropout: a block of U's columns at a time, the four between the threads (a
     * shared mask: one product over them all) */
    const int nb = mask_blocks(k);
    int st = k->hmask ? masked_products(h_prev, f->U, G, k->hmask + t * mask_step(k), nb, P,
                                        G / nb, k->B, lo, hi, 0, nb, 1.0f, z, G, f->hbuf, nb > 1)
                      : rk_gemm('N', 'N', n, G, P, 1.0f, h_prev + lo * P, P, f->U, G, 1.0f,
                                z + lo * G, G);
    if (st) return st;
    float *m = k->proj ? (s ? s->m + at * H : f->m_step) : yt;
    #pragma omp parallel for schedule(static) if (th < 0 && n * G >= PARALLEL_MIN)
    for (int64_t r = lo; r < hi; r++) {
        const int64_t row = at + r;
        float *zr = z + r * G;
        const float *cp = (s && t > 0) ? s->cells + (off[t - 1] + r) * H : f->c_run + r * H;
        float *cn = s ? s->cells + row * H : f->c_step + r * H;
        float *ac = s ? s->act_c + row * H : f->ac_step + r * H;
        if (standard(k)) {
            row_forward_std(k, zr, f->b, cp, cn, ac, m + r * H, f->peep, 0, H);
        } else {
            if (f->b) for (int64_t j = 0; j < G; j++) zr[j] += f->b[j];
            row_forward(k, zr, cp, cn, ac, m + r * H, f->peep, f->gamma, f->beta,
                        s && k->layer_norm ? s->xhat + row * 5 * H : NULL,
                        s && k->layer_norm ? s->rstd + row * 5 : NULL);
        }
        memcpy(f->c_run + r * H, cn, H * sizeof(float));
    }
    if (k->proj) {
        if ((st = rk_gemm('N', 'N', n, P, H, 1.0f, m + lo * H, H, f->Pw, P, 0.0f, yt + lo * P, P)))
            return st;
        if (k->proj_clip > 0.0f) {
            const float pc = k->proj_clip;
            for (int64_t j = lo * P; j < hi * P; j++) yt[j] = clampf(yt[j], -pc, pc);
        }
    }
    return 0;
}

/* Forward over the sequence. s: buffers to keep for backward (training), or NULL; scratch:
 * [N*4H] (gates, when s is NULL) + [B*H] (c) + 3 [B*H] (a step's c, act(c), m; inference).
 * Returns 0, a dnnl status, or -1 (out of memory). */
int rk_lstm_forward(const rk_cfg *k, const int64_t *lengths, const float *x, const float *h0,
                    const float *c0, const float *W, const float *U, const float *b,
                    const float *peep, const float *Pw, const float *gamma, const float *beta,
                    float *y, float *hT, float *cT, rk_saved *s, float *scratch) {
    const int64_t T = k->T, B = k->B, D = k->D, H = k->H, P = k->P, G = 4 * H;
    int64_t *plan = plan_rows(lengths, B, T);
    if (!plan) return -1;
    const int64_t *active = plan, *off = plan + T;
    float *gates = s ? s->gates : scratch;
    /* inference: the new cells, act(c) and m of a step in buffers of their own (no aliasing) */
    float *c_run = scratch + (s ? 0 : off[T] * G), *c_step = c_run + B * H;
    float *ac_step = c_step + B * H, *m_step = ac_step + B * H;
    float *hbuf = k->hmask ? malloc((size_t)4 * B * P * sizeof(float)) : NULL;
    int st = k->hmask && !hbuf ? -1 : 0;
    if (!st && k->xmask)
        st = masked_projection(x, W, k->xmask, active, off, T, D, H, 4, gates, NULL, NULL, NULL);
    else if (!st) st = rk_gemm('N', 'N', off[T], G, D, 1.0f, x, D, W, G, 0.0f, gates, G);
    memcpy(c_run, c0, B * H * sizeof(float));
    const int small = small_batch(k);  /* decided once: the path runs the whole sequence */
    if (!st && small)
        st = forward_small(k, active, off, h0, U, b, peep, gates, y, c_run, c_step, ac_step, s);
    const fwd_call f = {active, off, h0, U, b, peep, Pw, gamma, beta, gates, y, c_run, c_step,
                        ac_step, m_step, s, hbuf};
    const int split = !small && split_batch(k);
    if (!st && split) st = run_split(T, B, lengths, active, 0, forward_step, k, &f);
    for (int64_t t = 0; t < T && !st && !small && !split && active[t] > 0; t++)
        st = forward_step(k, &f, t, 0, active[t], -1);
    if (!st) final_h(lengths, off, B, T, P, y, h0, hT);
    memcpy(cT, c_run, B * H * sizeof(float));
    free(hbuf);
    free(plan);
    return st;
}

/* A thread's sums over rows in backward: d of the peepholes [3H], layer-norm gains and shifts
 * [5H each], then [5H] of scratch. (The bias's is one product at the end.) */
#define ACC_SIZE(H) (18 * (H))

/* Backward of one row of one step: dm (d(act(c) * o)) and dc (d of the new cell, carried in,
 * replaced by d of the previous cell) in; dz (d of the pre-activation gates) out; the sums
 * over rows added into the thread's acc. */
static void row_backward(const rk_cfg *k, const float *gt, const float *c_prev, const float *cn,
                         const float *ac, const float *dm, float *dc, float *dz,
                         const float *peep, const float *gamma, const float *xhat,
                         const float *rstd, float *acc) {
    const int64_t H = k->H;
    float *dpeep = acc, *dgamma = acc + 3 * H, *dbeta = acc + 8 * H, *tmp = acc + 13 * H;
    const float *si = gt + at_gate(k, 0), *sf = gt + at_gate(k, 1), *ga = gt + at_gate(k, 2);
    const float *so = gt + at_gate(k, 3);
    float *di = dz + at_gate(k, 0), *df = dz + at_gate(k, 1), *dg = dz + at_gate(k, 2);
    float *dout = dz + at_gate(k, 3);
    float *d_gates = tmp, *d_ac = tmp + 4 * H;  /* derivatives of the activations, i f g o */
    deriv_n(k->ract, si, d_gates, H);
    deriv_n(k->ract, sf, d_gates + H, H);
    deriv_n(k->act, ga, d_gates + 2 * H, H);
    deriv_n(k->ract, so, d_gates + 3 * H, H);
    deriv_n(k->act, ac, d_ac, H);
    for (int64_t j = 0; j < H; j++) {
        dout[j] = dm[j] * ac[j] * d_gates[3 * H + j];
        dc[j] += dm[j] * so[j] * d_ac[j];
    }
    if (k->peephole)
        for (int64_t j = 0; j < H; j++) {
            dc[j] += dout[j] * peep[2 * H + j];
            dpeep[2 * H + j] += dout[j] * cn[j];
        }
    if (k->cell_clip > 0.0f) {
        const float cc = k->cell_clip;
        for (int64_t j = 0; j < H; j++) dc[j] = fabsf(cn[j]) < cc ? dc[j] : 0.0f;
    }
    if (k->layer_norm)
        norm_back(dc, H, gamma + 4 * H, xhat + 4 * H, rstd[4], dgamma + 4 * H, dbeta + 4 * H);
    for (int64_t j = 0; j < H; j++) {
        float d = dc[j];
        di[j] = d * ga[j] * d_gates[j];
        df[j] = d * c_prev[j] * d_gates[H + j];
        dg[j] = d * si[j] * d_gates[2 * H + j];
        dc[j] = d * sf[j];
    }
    if (k->peephole)
        for (int64_t j = 0; j < H; j++) {
            dc[j] += di[j] * peep[j] + df[j] * peep[H + j];
            dpeep[j] += di[j] * c_prev[j];
            dpeep[H + j] += df[j] * c_prev[j];
        }
    if (k->layer_norm)
        for (int q = 0; q < 4; q++)
            norm_back(dz + at_gate(k, q), H, gamma + q * H, xhat + q * H, rstd[q],
                      dgamma + q * H, dbeta + q * H);
}

/* row_backward for the common LSTM (see standard) in one pass over the units. */
static inline __attribute__((always_inline)) void backward_std_loop(
        const rk_cfg *k, const float *gt, const float *restrict c_prev,
        const float *restrict cn, const float *restrict ac, const float *restrict dm,
        float *restrict dc, float *dz, const float *restrict peep, float *acc, float cc,
        int64_t j0, int64_t j1, const int ph, const int clip) {
    const int64_t H = k->H, oi = at_gate(k, 0), of = at_gate(k, 1), og = at_gate(k, 2);
    const int64_t oo = at_gate(k, 3);
    /* no two of these overlap: saying so lets the loop vectorize */
    const float *restrict gi = gt + oi, *restrict gf = gt + of, *restrict gg = gt + og;
    const float *restrict go = gt + oo;
    float *restrict dzi = dz + oi, *restrict dzf = dz + of, *restrict dzg = dz + og;
    float *restrict dzo = dz + oo;
    float *restrict dpi = acc, *restrict dpf = acc + H, *restrict dpo = acc + 2 * H;
    #pragma omp simd
    for (int64_t j = j0; j < j1; j++) {
        const float si = gi[j], sf = gf[j], ga = gg[j], so = go[j];
        const float a = ac[j], c = cn[j], cp = c_prev[j];
        const float dout = dm[j] * a * so * (1.0f - so);
        float d = dc[j] + dm[j] * so * (1.0f - a * a);
        if (ph) { d += dout * peep[2 * H + j]; dpo[j] += dout * c; }
        if (clip) d = fabsf(c) < cc ? d : 0.0f;
        const float di = d * ga * si * (1.0f - si), df = d * cp * sf * (1.0f - sf);
        const float dg = d * si * (1.0f - ga * ga);
        float dcp = d * sf;
        if (ph) {
            dcp += di * peep[j] + df * peep[H + j];
            dpi[j] += di * cp;
            dpf[j] += df * cp;
        }
        dc[j] = dcp;
        dzi[j] = di; dzf[j] = df; dzg[j] = dg; dzo[j] = dout;
    }
}

/* Units [j0, j1) of one row (pointers are the row's, not offset). */
static void row_backward_std(const rk_cfg *k, const float *gt, const float *c_prev,
                             const float *cn, const float *ac, const float *dm, float *dc,
                             float *dz, const float *peep, float *acc, int64_t j0, int64_t j1) {
    const float cc = k->cell_clip;
    switch ((k->peephole ? 1 : 0) | (cc > 0.0f ? 2 : 0)) {
#define CASE(n) case n: backward_std_loop(k, gt, c_prev, cn, ac, dm, dc, dz, peep, acc, cc, j0, j1, n & 1, n & 2); break;
    CASE(0) CASE(1) CASE(2) CASE(3)
#undef CASE
    }
}

/* The backward steps on the small-batch path (see forward_small and rk_lstm_backward). */
static int backward_small(const rk_cfg *k, const int64_t *active, const int64_t *off,
                          const float *h0, const float *c0, const float *Ut, const float *peep,
                          const float *y, const rk_saved *s, const float *dy, float *dh,
                          float *dc, float *dz, float *h_in, float *acc) {
    const int64_t T = k->T, B = k->B, H = k->H, P = k->P, G = 4 * H;
    const int most = omp_get_max_threads();
    float *parts = malloc((size_t)2 * most * B * P * sizeof(float));
    float *packed = malloc((size_t)P * G * sizeof(float));
    if (!parts || !packed) { free(parts); free(packed); return -1; }
    #pragma omp parallel
    {
        const int th = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t u0 = unit_start(H, th, nt), u1 = unit_start(H, th + 1, nt), n = u1 - u0;
        float *mine = acc + (size_t)th * ACC_SIZE(H);
        float *panels = packed + 4 * P * u0;  /* my rows of Ut, gate by gate, PANEL columns */
        float *pan = panels;
        for (int q = 0; q < 4; q++)
            for (int64_t k0 = 0; k0 < P; k0 += PANEL) {
                const int64_t w = P - k0 < PANEL ? P - k0 : PANEL;
                for (int64_t c = 0; c < n; c++)
                    memcpy(pan + c * w, Ut + (at_gate(k, q) + u0 + c) * P + k0, w * sizeof(float));
                pan += n * w;
            }
        int64_t pending = 0;  /* rows whose d(h) the last step's parts hold */
        int parity = 0;
        for (int64_t t = T - 1; t >= -1; t--) {
            if (t >= 0 && active[t] == 0) continue;
            const float *last = parts + (size_t)(parity ^ 1) * most * B * P;  /* last step's */
            for (int64_t r = 0; r < pending; r++)  /* d(h) of my units: the sum of the parts */
                for (int64_t j = u0; j < u1; j++) {
                    float v = 0.0f;
                    for (int q = 0; q < nt; q++) v += last[(size_t)q * B * P + r * P + j];
                    dh[r * P + j] = v;
                }
            if (t < 0) break;
            const int64_t a = active[t], at = off[t];
            float *part = parts + ((size_t)parity * most + th) * B * P;
            for (int64_t r = 0; r < a; r++) {
                const int64_t row = at + r;
                const float *hp = t == 0 ? h0 + r * P : y + (off[t - 1] + r) * P;
                if (h_in) memcpy(h_in + row * P + u0, hp + u0, n * sizeof(float));
                for (int64_t j = u0; j < u1; j++) dh[r * P + j] += dy[row * P + j];
                const float *cp = t == 0 ? c0 + r * H : s->cells + (off[t - 1] + r) * H;
                row_backward_std(k, s->gates + row * G, cp, s->cells + row * H,
                                 s->act_c + row * H, dh + r * P, dc + r * H, dz + row * G, peep,
                                 mine, u0, u1);
                float *out = part + r * P;
                memset(out, 0, P * sizeof(float));
                pan = panels;
                for (int q = 0; q < 4; q++)
                    for (int64_t k0 = 0; k0 < P; k0 += PANEL) {
                        const int64_t w = P - k0 < PANEL ? P - k0 : PANEL;
                        panel_product(n, dz + row * G + at_gate(k, q) + u0, pan, w, out + k0);
                        pan += n * w;
                    }
            }
            pending = a;
            parity ^= 1;
            #pragma omp barrier
        }
    }
    free(parts);
    free(packed);
    return 0;
}

typedef struct {   /* a backward call's inputs and buffers (see rk_lstm_backward) */
    const int64_t *active, *off;
    const float *h0, *c0, *Ut, *peep, *Pwt, *gamma, *y, *dy;
    const rk_saved *s;
    float *dh, *dc, *dz, *h_in, *dyp, *dm_buf, *acc;
    float *hbuf;  /* [4, B, P]: each block's part of d(h_prev) (hmask only) */
} bwd_call;

/* Rows [lo, hi) of step t in backward (call: a bwd_call): their gate gradients (dz), and d of
 * their previous h and c (dh, dc). th as forward_step's (the thread's sums, acc, are its own).
 * Returns 0 or a dnnl status. */
static int backward_step(const void *cfg, const void *call, int64_t t, int64_t lo, int64_t hi,
                         int th) {
    const rk_cfg *k = cfg;
    const bwd_call *f = call;
    const int64_t H = k->H, P = k->P, G = 4 * H, n = hi - lo, at = f->off[t];
    const int64_t *off = f->off;
    const rk_saved *s = f->s;
    float *dh = f->dh;
    if (f->h_in)
        memcpy(f->h_in + (at + lo) * P, (t == 0 ? f->h0 : f->y + off[t - 1] * P) + lo * P,
               n * P * sizeof(float));
    const float *dyt = f->dy + at * P;
    for (int64_t j = lo * P; j < hi * P; j++) dh[j] += dyt[j];
    const float *dm = dh;
    if (k->proj) {
        float *dp = f->dyp + at * P;
        const float *yt = f->y + at * P;
        for (int64_t j = lo * P; j < hi * P; j++)
            dp[j] = (k->proj_clip > 0.0f && !(fabsf(yt[j]) < k->proj_clip)) ? 0.0f : dh[j];
        int st = rk_gemm('N', 'N', n, H, P, 1.0f, dp + lo * P, P, f->Pwt, H, 0.0f,
                         f->dm_buf + lo * H, H);
        if (st) return st;
        dm = f->dm_buf;
    }
    #pragma omp parallel for schedule(static) if (th < 0 && n * G >= PARALLEL_MIN)
    for (int64_t r = lo; r < hi; r++) {
        const int64_t row = at + r;
        const float *cp = t == 0 ? f->c0 + r * H : s->cells + (off[t - 1] + r) * H;
        float *mine = f->acc + (size_t)(th < 0 ? omp_get_thread_num() : th) * ACC_SIZE(H);
        if (standard(k))
            row_backward_std(k, s->gates + row * G, cp, s->cells + row * H, s->act_c + row * H,
                             dm + r * H, f->dc + r * H, f->dz + row * G, f->peep, mine, 0, H);
        else
            row_backward(k, s->gates + row * G, cp, s->cells + row * H, s->act_c + row * H,
                         dm + r * H, f->dc + r * H, f->dz + row * G, f->peep, f->gamma,
                         k->layer_norm ? s->xhat + row * 5 * H : NULL,
                         k->layer_norm ? s->rstd + row * 5 : NULL, mine);
    }
    if (!k->hmask)
        return rk_gemm('N', 'N', n, P, G, 1.0f, f->dz + (at + lo) * G, G, f->Ut, P, 0.0f,
                       dh + lo * P, P);
    const int nb = mask_blocks(k);  /* as forward_step's */
    return masked_products_back(f->dz + at * G, G, f->Ut, k->hmask + t * mask_step(k), nb, P,
                                G / nb, k->B, lo, hi, 0, nb, 1, dh, f->hbuf, nb > 1);
}

/* Backward over the sequence, given the recurrent matrices transposed (Ut [4H, P], Pwt [P, H]:
 * the per-step products run faster untransposed). dy [N, P], dhT [B, P] and dcT [B, H] are
 * the incoming gradients (dhT, dcT are overwritten: they carry the state gradients and end as
 * dh0, dc0). Weight gradients are overwritten; dx may be NULL (not wanted). scratch:
 * [N*4H] (dz) + [N*P] (each step's previous h, with lengths only) + [N*P] (d of the projected
 * output, projection only) + [B*H] (dm). Returns 0, a dnnl status, or -1 (out of memory). */
int rk_lstm_backward(const rk_cfg *k, const int64_t *lengths, const float *x, const float *h0,
                     const float *c0, const float *W, const float *Ut, const float *peep,
                     const float *Pwt, const float *gamma, const float *y, const rk_saved *s,
                     const float *dy, float *dh, float *dc, float *dx, float *dW, float *dU,
                     float *db, float *dpeep, float *dPw, float *dgamma, float *dbeta,
                     float *scratch) {
    const int64_t T = k->T, B = k->B, D = k->D, H = k->H, P = k->P, G = 4 * H;
    const int threads = omp_get_max_threads();
    int64_t *plan = plan_rows(lengths, B, T);
    float *acc = calloc((size_t)threads * ACC_SIZE(H), sizeof(float));
    float *hbuf = k->hmask ? malloc((size_t)4 * B * P * sizeof(float)) : NULL;
    int st = (plan && acc && (hbuf || !k->hmask)) ? 0 : -1;
    const int64_t *active = plan, *off = plan + T, N = plan ? off[T] : 0;
    float *dz = scratch, *h_in = lengths ? dz + N * G : NULL;  /* see prev_h_product */
    float *dyp = dz + N * G + (lengths ? N * P : 0), *dm_buf = dyp + (k->proj ? N * P : 0);
    const int small = small_batch(k);  /* decided once: the path runs the whole sequence */
    if (!st && small)
        st = backward_small(k, active, off, h0, c0, Ut, peep, y, s, dy, dh, dc, dz, h_in, acc);
    const bwd_call f = {active, off, h0, c0, Ut, peep, Pwt, gamma, y, dy, s, dh, dc, dz, h_in,
                        dyp, dm_buf, acc, hbuf};
    const int split = !small && split_batch(k);
    if (!st && split) st = run_split(T, B, lengths, active, 1, backward_step, k, &f);
    for (int64_t t = T - 1; t >= 0 && !st && !small && !split; t--)
        if (active[t] > 0) st = backward_step(k, &f, t, 0, active[t], -1);
    if (!st && k->xmask)
        st = masked_projection(x, W, k->xmask, active, off, T, D, H, 4, NULL, dz, dW, dx);
    else {
        if (!st && dx) st = gemm_split('N', 'T', N, D, G, 1.0f, dz, G, W, G, 0.0f, dx, D);
        if (!st) st = rk_gemm('T', 'N', D, G, N, 1.0f, x, D, dz, G, 0.0f, dW, G);
    }
    if (!st && k->hmask)
        st = masked_prev_h_product(k->hmask, mask_step(k), mask_blocks(k), P,
                                   G / mask_blocks(k), active, off, T, h0, y, dz, G, 0,
                                   mask_blocks(k), dU, G);
    else if (!st) st = prev_h_product(lengths, N, B, P, G, h0, y, h_in, dz, G, dU, G);
    if (!st && k->proj) st = rk_gemm('T', 'N', H, P, N, 1.0f, s->m, H, dyp, P, 0.0f, dPw, P);
    if (!st && db) st = column_sums(dz, N, G, db);
    if (!st) {  /* the threads' sums */
        struct { float *out; int64_t at, n; } sums[] = {
            {dpeep, 0, 3 * H}, {dgamma, 3 * H, 5 * H}, {dbeta, 8 * H, 5 * H}};
        for (size_t q = 0; q < sizeof(sums) / sizeof(sums[0]); q++) {
            if (!sums[q].out) continue;
            memset(sums[q].out, 0, sums[q].n * sizeof(float));
            for (int th = 0; th < threads; th++) {
                const float *part = acc + (size_t)th * ACC_SIZE(H) + sums[q].at;
                for (int64_t j = 0; j < sums[q].n; j++) sums[q].out[j] += part[j];
            }
        }
    }
    free(hbuf);
    free(acc);
    free(plan);
    return st;
}
