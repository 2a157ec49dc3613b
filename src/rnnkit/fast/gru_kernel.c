/* rnnkit's own fused GRU (both reset variants) and vanilla RNN, for activations oneDNN lacks
 * (hard_sigmoid gates of Keras 2 files, relu or softsign candidates...), forward and backward
 * over a whole packed sequence in one call, as lstm_kernel.c (layouts, packing, sgemm, and
 * batches split between threads where U stays in each core's cache: kernels.h's run_split).
 *
 * Layouts: W [D, G*H]; U [H, G*H]; b [G*H]; b_h [3H] (reset after only); gates in Keras order
 * z, r, c (G = 3) or the one block h (vanilla RNN, G = 1); h [B, H]; x [N, D]; y [N, H].
 * The equations are rnnkit/cells/equations.py's gru and simple_rnn.
 *
 * Keras recurrent dropout (hmask): the recurrent products one gate block at a time, each on h
 * times that block's mask (reset before: the candidate's on r * h times its mask); the update
 * z * h keeps the undropped h. Per-gate input masks (xmask): the input projection a block at a
 * time (kernels.h). TF1 state dropout: one mask on h for every block (shared) and for the
 * update z * h (umask), so the step reads the dropped state everywhere; the same mask for
 * every step or one per step (per_step).
 */
#include "kernels.h"

typedef struct {
    int64_t T, B, D, H;
    int32_t act, ract;     /* activation ids of the candidate (or the RNN) and of the gates */
    int32_t gru, reset_after;
    const float *xmask;    /* Keras input dropout with recurrent dropout: [B, G, D] (kernels.h);
                              NULL: none */
    const float *hmask;    /* Keras recurrent dropout: [B, G, H] (a vanilla RNN's [B, 1, H]), one
                              mask per block of U's columns; NULL: none */
    const float *umask;    /* state dropout (GRU): [B, H], the update's h dropped too,
                              z * h * umask; NULL: none */
    int32_t per_step;      /* hmask [T, B, G, H] and umask [T, B, H]: step t's masks at t (TF1
                              state dropout without variational_recurrent) */
    int32_t shared;        /* a GRU's hmask is one mask for all three blocks, [B, H] (per step
                              [T, B, H]): one product over the blocks h feeds (state dropout) */
} rk_gru_cfg;

typedef struct {           /* what the forward pass keeps for the backward pass */
    float *gates;          /* [N, G*H] activated z, r, c (GRU) or pre-activation (unused, RNN) */
    float *extra;          /* [N, H] reset after: h U_c + b_hc; reset before: r * h */
} rk_gru_saved;

static inline int64_t gates_of(const rk_gru_cfg *k) { return k->gru ? 3 * k->H : k->H; }

static inline int64_t blocks_of(const rk_gru_cfg *k) { return k->gru ? 3 : 1; }

/* hmask's blocks: one per gate block, or 1 (shared). */
static inline int64_t mask_blocks(const rk_gru_cfg *k) { return k->shared ? 1 : blocks_of(k); }

/* Floats between step t's hmask and step t+1's (0: one mask for every step). */
static inline int64_t mask_step(const rk_gru_cfg *k) {
    return k->per_step ? k->B * mask_blocks(k) * k->H : 0;
}

/* Step t's hmask and umask (one mask for every step unless per_step). */
static inline const float *hmask_at(const rk_gru_cfg *k, int64_t t) {
    return k->hmask + t * mask_step(k);
}

/* The candidate's mask row r at step t (reset before: on r * h). */
static inline const float *candidate_mask(const rk_gru_cfg *k, int64_t t, int64_t r) {
    return mask_row(hmask_at(k, t), mask_blocks(k), k->H, r, k->shared ? 0 : 2);
}

/* The recurrent products over blocks 0 .. cols/H - 1 of h, masked: one product per block, or
 * one over them all (shared). */
static inline int gru_masked_products(const rk_gru_cfg *k, int64_t t, const float *hp,
                                      const float *U, int64_t cols, int64_t lo, int64_t hi,
                                      float beta, float *out, float *buf) {
    const int64_t H = k->H, nb = mask_blocks(k), w = k->shared ? cols : H;
    return masked_products(hp, U, gates_of(k), hmask_at(k, t), nb, H, w, k->B, lo, hi, 0,
                           (int)(cols / w), beta, out, gates_of(k), buf, 0);
}

static inline const float *umask_at(const rk_gru_cfg *k, int64_t t) {
    return k->umask + (k->per_step ? t * k->B * k->H : 0);
}


/* ---- Batches split between threads (run_split, kernels.h) ---- */
static int split_batch(const rk_gru_cfg *k) {
    return !k->hmask && split_rows(k->B, k->H * gates_of(k) * (int64_t)sizeof(float));
}

/* Whether a call with this configuration splits its batch between threads (for tests). */
int rk_gru_split_batch(const rk_gru_cfg *k) { return split_batch(k); }

typedef struct {   /* a forward call's inputs and buffers (see rk_gru_forward) */
    const int64_t *off;
    const float *h0, *U, *b, *b_h;
    float *gates, *y, *hu, *rh_run;
    rk_gru_saved *s;
    float *hbuf;  /* [3, B, H]: h ⊙ each block's mask (hmask only) */
} fwd_call;

/* Rows [lo, hi) of step t (call: a fwd_call): their recurrent products, gates and outputs. th:
 * the calling thread inside a parallel region, or -1: split the rows' gate passes between
 * threads. Returns 0 or a dnnl status. */
static int forward_step(const void *cfg, const void *call, int64_t t, int64_t lo, int64_t hi,
                        int th) {
    const rk_gru_cfg *k = cfg;
    const fwd_call *f = call;
    const int64_t H = k->H, G = gates_of(k), n = hi - lo, at = f->off[t];
    const float *b = f->b, *b_h = f->b_h;
    float *z = f->gates + at * G, *yt = f->y + at * H, *hu = f->hu;
    const float *hp = t == 0 ? f->h0 : f->y + f->off[t - 1] * H;
    int st;
    if (!k->gru) {
        if (k->hmask) st = gru_masked_products(k, t, hp, f->U, H, lo, hi, 1.0f, z, f->hbuf);
        else st = rk_gemm('N', 'N', n, H, H, 1.0f, hp + lo * H, H, f->U, H, 1.0f, z + lo * H, H);
        if (st) return st;
        for (int64_t j = lo * H; j < hi * H; j++) yt[j] = z[j] + (b ? b[j % H] : 0.0f);
        act_n(k->act, yt + lo * H, n * H);
        return 0;
    }
    if (k->hmask) {
        st = k->reset_after ? gru_masked_products(k, t, hp, f->U, G, lo, hi, 0.0f, hu, f->hbuf)
                            : gru_masked_products(k, t, hp, f->U, 2 * H, lo, hi, 1.0f, z,
                                                  f->hbuf);
        if (st) return st;
    } else if (k->reset_after) {
        if ((st = rk_gemm('N', 'N', n, G, H, 1.0f, hp + lo * H, H, f->U, G, 0.0f, hu + lo * G, G)))
            return st;
    } else if ((st = rk_gemm('N', 'N', n, 2 * H, H, 1.0f, hp + lo * H, H, f->U, G, 1.0f,
                             z + lo * G, G))) {
        return st;
    }
    rk_gru_saved *s = f->s;
    float *rh = s && !k->reset_after ? s->extra + at * H : f->rh_run;
    #pragma omp parallel for schedule(static) if (th < 0 && n * G >= PARALLEL_MIN)
    for (int64_t r = lo; r < hi; r++) {
        float *zr = z + r * G, *hur = hu + r * G;
        const float *h = hp + r * H;
        for (int64_t j = 0; j < G; j++) zr[j] += b ? b[j] : 0.0f;
        if (k->reset_after) {
            for (int64_t j = 0; j < G; j++) hur[j] += b_h ? b_h[j] : 0.0f;
            for (int64_t j = 0; j < 2 * H; j++) zr[j] += hur[j];
        }
        act_n(k->ract, zr, 2 * H);
        if (k->reset_after) {
            for (int64_t j = 0; j < H; j++) zr[2 * H + j] += zr[H + j] * hur[2 * H + j];
            if (s) memcpy(s->extra + (at + r) * H, hur + 2 * H, H * sizeof(float));
        } else if (k->hmask) {  /* the candidate's product reads r * h times its mask */
            const float *mc = candidate_mask(k, t, r);
            for (int64_t j = 0; j < H; j++) rh[r * H + j] = zr[H + j] * h[j] * mc[j];
        } else {
            for (int64_t j = 0; j < H; j++) rh[r * H + j] = zr[H + j] * h[j];
        }
    }
    if (!k->reset_after && (st = rk_gemm('N', 'N', n, H, H, 1.0f, rh + lo * H, H, f->U + 2 * H,
                                         G, 1.0f, z + lo * G + 2 * H, G)))
        return st;
    #pragma omp parallel for schedule(static) if (th < 0 && n * G >= PARALLEL_MIN)
    for (int64_t r = lo; r < hi; r++) {
        float *zr = z + r * G, *c = zr + 2 * H;
        const float *h = hp + r * H;
        act_n(k->act, c, H);
        if (k->umask) {
            const float *mu = umask_at(k, t) + r * H;
            for (int64_t j = 0; j < H; j++)
                yt[r * H + j] = zr[j] * h[j] * mu[j] + (1.0f - zr[j]) * c[j];
        } else {
            for (int64_t j = 0; j < H; j++) yt[r * H + j] = zr[j] * h[j] + (1.0f - zr[j]) * c[j];
        }
    }
    return 0;
}

/* Forward. s: buffers for backward (training), or NULL; scratch: [N*G*H] (gates, when s is NULL)
 * + [B*3H] (h U of a step) + [B*H] (r * h of a step). Returns 0, a dnnl status or -1. */
int rk_gru_forward(const rk_gru_cfg *k, const int64_t *lengths, const float *x, const float *h0,
                   const float *W, const float *U, const float *b, const float *b_h, float *y,
                   float *hT, rk_gru_saved *s, float *scratch) {
    const int64_t T = k->T, B = k->B, D = k->D, H = k->H, G = gates_of(k);
    int64_t *plan = plan_rows(lengths, B, T);
    if (!plan) return -1;
    const int64_t *active = plan, *off = plan + T;
    float *gates = s ? s->gates : scratch;
    float *hu = scratch + (s ? 0 : off[T] * G), *rh_run = hu + B * 3 * H;
    float *hbuf = k->hmask ? malloc((size_t)3 * B * H * sizeof(float)) : NULL;
    int st = k->hmask && !hbuf ? -1 : 0;
    if (!st && k->xmask)
        st = masked_projection(x, W, k->xmask, active, off, T, D, H, G / H, gates, NULL, NULL,
                               NULL);
    else if (!st) st = rk_gemm('N', 'N', off[T], G, D, 1.0f, x, D, W, G, 0.0f, gates, G);
    const fwd_call f = {off, h0, U, b, b_h, gates, y, hu, rh_run, s, hbuf};
    const int split = split_batch(k);  /* decided once: each thread runs its rows to the end */
    if (!st && split) st = run_split(T, B, lengths, active, 0, forward_step, k, &f);
    for (int64_t t = 0; t < T && !st && !split && active[t] > 0; t++)
        st = forward_step(k, &f, t, 0, active[t], -1);
    if (!st) final_h(lengths, off, B, T, H, y, h0, hT);
    free(hbuf);
    free(plan);
    return st;
}

/* A GRU row's d(z) and d(c) pre-activations from d(h') (d, replaced by its z * h' part), the
 * activations and their derivatives; mu: the update's state mask (umask's row), or NULL.
 * Separate, non-overlapping arrays, so the loops vectorize. */
static void back_zc(int64_t H, const float *restrict z, const float *restrict c,
                    const float *restrict h, const float *restrict mu,
                    const float *restrict der_z, const float *restrict der_c,
                    float *restrict d, float *restrict dz, float *restrict dc) {
    if (mu) {
        for (int64_t j = 0; j < H; j++) {
            dz[j] = d[j] * (h[j] * mu[j] - c[j]) * der_z[j];
            dc[j] = d[j] * (1.0f - z[j]) * der_c[j];
            d[j] *= z[j] * mu[j];
        }
        return;
    }
    for (int64_t j = 0; j < H; j++) {
        dz[j] = d[j] * (h[j] - c[j]) * der_z[j];
        dc[j] = d[j] * (1.0f - z[j]) * der_c[j];
        d[j] *= z[j];
    }
}

/* Reset after: d(r) from d(c) and h U_c + b_hc, and the gradient of h U + b_h (du*). */
static void back_r_after(int64_t H, const float *restrict huc, const float *restrict r,
                         const float *restrict der_r, const float *restrict dz,
                         const float *restrict dc, float *restrict dr, float *restrict duz,
                         float *restrict dur, float *restrict duc) {
    for (int64_t j = 0; j < H; j++) {
        dr[j] = dc[j] * huc[j] * der_r[j];
        duz[j] = dz[j];
        dur[j] = dr[j];
        duc[j] = dc[j] * r[j];
    }
}

typedef struct {   /* a backward call's inputs and buffers (see rk_gru_backward) */
    const int64_t *off;
    const float *h0, *Ut, *y, *dy;
    const rk_gru_saved *s;
    float *dh, *dxw, *dhu, *h_in, *drh, *tmp;
    float *hbuf;  /* [3, B, H]: each block's part of d(h_prev) (hmask only) */
} bwd_call;

/* Rows [lo, hi) of step t in backward (call: a bwd_call): their gate gradients (dxw, and dhu
 * reset after), and d of their previous h (dh). th as forward_step's (the thread's scratch,
 * tmp, is its own). Returns 0 or a dnnl status. */
static int backward_step(const void *cfg, const void *call, int64_t t, int64_t lo, int64_t hi,
                         int th) {
    const rk_gru_cfg *k = cfg;
    const bwd_call *f = call;
    const int64_t H = k->H, G = gates_of(k), n = hi - lo, at = f->off[t];
    const rk_gru_saved *s = f->s;
    float *dh = f->dh, *dxw = f->dxw, *dhu = f->dhu, *drh = f->drh;
    const float *hp = t == 0 ? f->h0 : f->y + f->off[t - 1] * H, *yt = f->y + at * H;
    if (f->h_in) memcpy(f->h_in + (at + lo) * H, hp + lo * H, n * H * sizeof(float));
    const float *dyt = f->dy + at * H;
    for (int64_t j = lo * H; j < hi * H; j++) dh[j] += dyt[j];
    #pragma omp parallel for schedule(static) if (th < 0 && n * G >= PARALLEL_MIN)
    for (int64_t r = lo; r < hi; r++) {
        const int64_t row = at + r;
        const float *g = s->gates + row * G, *h = hp + r * H;
        float *d = dh + r * H, *dg = dxw + row * G;
        float *der = f->tmp + (size_t)(th < 0 ? omp_get_thread_num() : th) * 3 * H;
        if (!k->gru) {
            deriv_n(k->act, yt + r * H, der, H);
            for (int64_t j = 0; j < H; j++) dg[j] = d[j] * der[j];
            continue;
        }
        const float *zg = g, *rg = g + H, *cg = g + 2 * H;
        deriv_n(k->ract, g, der, 2 * H);
        deriv_n(k->act, cg, der + 2 * H, H);
        back_zc(H, zg, cg, h, k->umask ? umask_at(k, t) + r * H : NULL, der, der + 2 * H, d, dg,
                dg + 2 * H);
        if (k->reset_after) {
            float *du = dhu + row * G;
            back_r_after(H, s->extra + row * H, rg, der + H, dg, dg + 2 * H, dg + H, du, du + H,
                         du + 2 * H);
        }
    }
    int st;
    if (!k->reset_after && k->gru) {  /* d(r * h) = dc U_c^T, then dr and dh */
        if ((st = rk_gemm('N', 'N', n, H, H, 1.0f, dxw + (at + lo) * G + 2 * H, G,
                          f->Ut + 2 * H * H, H, 0.0f, drh + lo * H, H)))
            return st;
        #pragma omp parallel for schedule(static) if (th < 0 && n * G >= PARALLEL_MIN)
        for (int64_t r = lo; r < hi; r++) {
            const int64_t row = at + r;
            const float *rg = s->gates + row * G + H, *h = hp + r * H;
            float *dg = dxw + row * G;
            float *der = f->tmp + (size_t)(th < 0 ? omp_get_thread_num() : th) * 3 * H;
            deriv_n(k->ract, rg, der, H);
            const float *mc = k->hmask ? candidate_mask(k, t, r) : NULL;
            for (int64_t j = 0; j < H; j++) {
                const float d_rh = mc ? drh[r * H + j] * mc[j] : drh[r * H + j];
                dg[H + j] = d_rh * h[j] * der[j];
                dh[r * H + j] += d_rh * rg[j];
            }
        }
    }
    const int64_t cols = (k->gru && !k->reset_after) ? 2 * H : G;  /* reset before: z, r */
    const float *dprod = (k->reset_after ? dhu : dxw) + at * G;  /* d of h U, step t */
    if (!k->hmask)
        return rk_gemm('N', 'N', n, H, cols, 1.0f, dprod + lo * G, G, f->Ut, H,
                       k->gru ? 1.0f : 0.0f, dh + lo * H, H);
    /* d(h_prev) += (d(h U)_j U_j^T) ⊙ mask j (a vanilla RNN's dh was used up above: =) */
    const int64_t w = k->shared ? cols : H;
    return masked_products_back(dprod, G, f->Ut, hmask_at(k, t), mask_blocks(k), H, w, k->B,
                                lo, hi, 0, (int)(cols / w), !k->gru, dh, f->hbuf, 0);
}

/* Backward, given Ut = U transposed [G*H, H]. dy [N, H]; dh [B, H] holds dhT on entry and dh0
 * on exit; weight gradients are overwritten (db_h may be NULL: no recurrent bias); dx may be
 * NULL. scratch: [N*G*H] (d of the input projection) + [N*G*H] (d of h U, reset after)
 * + [N*H] (each step's previous h, with lengths only) + [B*H] (d of r * h, reset before).
 * Returns 0, a dnnl status or -1. */
int rk_gru_backward(const rk_gru_cfg *k, const int64_t *lengths, const float *x, const float *h0,
                    const float *W, const float *Ut, const float *y, const rk_gru_saved *s,
                    const float *dy, float *dh, float *dx, float *dW, float *dU, float *db,
                    float *db_h, float *scratch) {
    const int64_t T = k->T, B = k->B, D = k->D, H = k->H, G = gates_of(k);
    const int threads = omp_get_max_threads();
    int64_t *plan = plan_rows(lengths, B, T);
    int st = plan ? 0 : -1;
    const int64_t *active = plan, *off = plan + T, N = plan ? off[T] : 0;
    float *dxw = scratch, *dhu = dxw + N * G, *h_in = lengths ? dhu + N * G : NULL;
    float *drh = dhu + N * G + (lengths ? N * H : 0);  /* h_in: see prev_h_product */
    float *dhu_or_dxw = k->reset_after ? dhu : dxw;  /* d of the recurrent products */
    float *tmp = malloc((size_t)threads * 3 * H * sizeof(float));
    float *hbuf = k->hmask ? malloc((size_t)3 * B * H * sizeof(float)) : NULL;
    if (!tmp || (k->hmask && !hbuf)) st = -1;
    const bwd_call f = {off, h0, Ut, y, dy, s, dh, dxw, dhu, h_in, drh, tmp, hbuf};
    const int split = split_batch(k);  /* decided once: each thread runs its rows to the end */
    if (!st && split) st = run_split(T, B, lengths, active, 1, backward_step, k, &f);
    for (int64_t t = T - 1; t >= 0 && !st && !split; t--)
        if (active[t] > 0) st = backward_step(k, &f, t, 0, active[t], -1);
    if (!st && k->xmask)
        st = masked_projection(x, W, k->xmask, active, off, T, D, H, G / H, NULL, dxw, dW, dx);
    else {
        if (!st && dx) st = gemm_split('N', 'T', N, D, G, 1.0f, dxw, G, W, G, 0.0f, dx, D);
        if (!st) st = rk_gemm('T', 'N', D, G, N, 1.0f, x, D, dxw, G, 0.0f, dW, G);
    }
    const int full = k->reset_after || !k->gru;  /* every block of U from h */
    if (!st && k->hmask)
        st = masked_prev_h_product(k->hmask, mask_step(k), mask_blocks(k), H,
                                   k->shared ? (full ? G : 2 * H) : H, active, off, T, h0, y,
                                   dhu_or_dxw, G, 0,
                                   k->shared ? 1 : (full ? blocks_of(k) : 2), dU, G);
    else if (!st && full)
        st = prev_h_product(lengths, N, B, H, G, h0, y, h_in, dhu_or_dxw, G, dU, G);
    else if (!st)
        st = prev_h_product(lengths, N, B, H, 2 * H, h0, y, h_in, dxw, G, dU, G);
    if (!st && k->gru && !k->reset_after)  /* U_zr from h (above), U_c from r * h */
        st = rk_gemm('T', 'N', H, H, N, 1.0f, s->extra, H, dxw + 2 * H, G, 0.0f, dU + 2 * H, G);
    if (!st && db) st = column_sums(dxw, N, G, db);
    if (!st && db_h) st = column_sums(dhu, N, G, db_h);
    free(hbuf);
    free(tmp);
    free(plan);
    return st;
}
