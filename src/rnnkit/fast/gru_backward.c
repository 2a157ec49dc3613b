/* The fused GRU's and vanilla RNN's backward pass (see gru.h). */
#include "gru.h"

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
