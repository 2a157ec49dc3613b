/* The fused LSTM's forward pass (see lstm.h), and the sgemm that every product of the library
 * calls (both of its sources), set by the loader. */
#include "lstm.h"

sgemm_fn rk_gemm;

void rk_set_gemm(void *fn) { rk_gemm = (sgemm_fn)fn; }

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

/* One row of one step: pre-activation gates z [4H] (overwritten by the activated gates),
 * previous cell c_prev, new cell into c_new, act(c) into ac, act(c) * o into m; xhat, rstd:
 * the layer norms' values for backward, or NULL (inference); gm: the row's candidate dropout
 * mask, or NULL (the gates keep act(g) undropped, for backward). */
static void row_forward(const rk_cfg *k, float *z, const float *c_prev, float *c_new, float *ac,
                        float *m, const float *peep, const float *gamma, const float *beta,
                        float *xhat, float *rstd, const float *gm) {
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
    if (gm)
        for (int64_t j = 0; j < H; j++) c_new[j] = f[j] * c_prev[j] + i[j] * (g[j] * gm[j]);
    else
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

/* Whether a call with this configuration takes the small-batch path (for tests). */
int rk_lstm_small_batch(const rk_cfg *k) { return small_batch(k); }

/* Whether a call with this configuration splits its batch between threads (for tests). */
int rk_lstm_split_batch(const rk_cfg *k) { return !small_batch(k) && split_batch(k); }

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
                        s && k->layer_norm ? s->rstd + row * 5 : NULL,
                        k->gmask ? k->gmask + (t * k->B + r) * H : NULL);
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

