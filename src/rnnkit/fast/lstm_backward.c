/* The fused LSTM's backward pass (see lstm.h). */
#include "lstm.h"

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

/* A thread's sums over rows in backward: d of the peepholes [3H], layer-norm gains and shifts
 * [5H each], then [5H] of scratch. (The bias's is one product at the end.) */
#define ACC_SIZE(H) (18 * (H))

/* Backward of one row of one step: dm (d(act(c) * o)) and dc (d of the new cell, carried in,
 * replaced by d of the previous cell) in; dz (d of the pre-activation gates) out; the sums
 * over rows added into the thread's acc. */
static void row_backward(const rk_cfg *k, const float *gt, const float *c_prev, const float *cn,
                         const float *ac, const float *dm, float *dc, float *dz,
                         const float *peep, const float *gamma, const float *xhat,
                         const float *rstd, float *acc, const float *gm) {
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
    if (gm)  /* c' reads i * (g * mask) */
        for (int64_t j = 0; j < H; j++) {
            float d = dc[j];
            di[j] = d * (ga[j] * gm[j]) * d_gates[j];
            df[j] = d * c_prev[j] * d_gates[H + j];
            dg[j] = d * si[j] * gm[j] * d_gates[2 * H + j];
            dc[j] = d * sf[j];
        }
    else
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
                         k->layer_norm ? s->rstd + row * 5 : NULL, mine,
                         k->gmask ? k->gmask + (t * k->B + r) * H : NULL);
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
