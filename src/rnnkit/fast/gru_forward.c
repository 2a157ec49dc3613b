/* The fused GRU's and vanilla RNN's forward pass (see gru.h), and the sgemm that every product
 * of the library calls (both of its sources), set by the loader. */
#include "gru.h"

sgemm_fn rk_gemm;

void rk_set_gemm(void *fn) { rk_gemm = (sgemm_fn)fn; }

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
