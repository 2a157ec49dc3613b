/* The fused LSTM with its hidden units split between threads (no layer norm, no projection):
 * one parallel region for the whole sequence; each thread owns a slice of the units, keeps its
 * slice of U (forward) or of U^T (backward) in its own cache across the steps, computes its
 * gates' recurrent product with a single-threaded sgemm and runs the equations for its units.
 * A step then costs one barrier (everyone needs the whole previous h) instead of a threaded
 * product and a threaded pass over the gates. Backward: each thread's product d(gates) U^T is
 * a partial sum over all units, added up per unit slice after the step's barrier (partials
 * double-buffered, so a thread may start the next step while others still read). Per-unit
 * sums (bias and peephole gradients) need no reduction: each unit has one owner. Layouts and
 * packing as lstm_kernel.c.
 */
#include "kernels.h"

#define MIN_UNITS 16  /* per thread */

int lstm_units_threads(const rk_cfg *k) {
    if (k->layer_norm || k->proj) return 1;
    int64_t n = omp_get_max_threads();
    if (n > k->H / MIN_UNITS) n = k->H / MIN_UNITS;
    return n < 1 ? 1 : (int)n;
}

/* Units [j0, j1) of thread th of n. */
static void slice_of(int64_t H, int th, int n, int64_t *j0, int64_t *j1) {
    *j0 = H * th / n;
    *j1 = H * (th + 1) / n;
}

/* Forward of units [j0, j0 + hs) of one row: z [4hs] the recurrent products (gate-major),
 * gx the row's gates at j0 (input products in; activated gates out; gate q at gx + q*H). */
static void slice_forward(const rk_cfg *k, int64_t hs, float *z, float *gx, const float *b,
                          const float *c_prev, float *c_new, float *ac, float *m,
                          const float *peep) {
    const int64_t H = k->H;
    float *i = z, *f = z + hs, *g = z + 2 * hs, *o = z + 3 * hs;
    for (int q = 0; q < 4; q++)
        for (int64_t j = 0; j < hs; j++) z[q * hs + j] += gx[q * H + j] + (b ? b[q * H + j] : 0.0f);
    if (k->peephole)
        for (int64_t j = 0; j < hs; j++) { i[j] += peep[j] * c_prev[j]; f[j] += peep[H + j] * c_prev[j]; }
    act_n(k->ract, z, 2 * hs);
    act_n(k->act, g, hs);
    for (int64_t j = 0; j < hs; j++) c_new[j] = f[j] * c_prev[j] + i[j] * g[j];
    if (k->cell_clip > 0.0f) {
        const float cc = k->cell_clip;
        for (int64_t j = 0; j < hs; j++) c_new[j] = fminf(fmaxf(c_new[j], -cc), cc);
    }
    if (k->peephole)
        for (int64_t j = 0; j < hs; j++) o[j] += peep[2 * H + j] * c_new[j];
    act_n(k->ract, o, hs);
    memcpy(ac, c_new, hs * sizeof(float));
    act_n(k->act, ac, hs);
    for (int64_t j = 0; j < hs; j++) m[j] = o[j] * ac[j];
    for (int q = 0; q < 4; q++) memcpy(gx + q * H, z + q * hs, hs * sizeof(float));
}

int lstm_forward_units(const rk_cfg *k, const int64_t *lengths, const float *x, const float *h0,
                       const float *c0, const float *W, const float *U, const float *b,
                       const float *peep, float *y, float *hT, float *cT, rk_saved *s,
                       float *scratch) {
    const int64_t T = k->T, B = k->B, D = k->D, H = k->H, G = 4 * H;
    const int n = lstm_units_threads(k);
    const int64_t most = H / n + 1;  /* units of the largest slice */
    int64_t *plan = plan_rows(lengths, B, T);
    float *local = malloc((size_t)n * (H * 4 * most + B * 4 * most + B * most) * sizeof(float));
    int st = (plan && local) ? 0 : -1;
    const int64_t *active = plan, *off = plan + T;
    float *gates = s ? s->gates : scratch;
    float *c_run = scratch + (s ? 0 : (plan ? off[T] : 0) * G);
    if (!st) st = rk_gemm('N', 'N', off[T], G, D, 1.0f, x, D, W, G, 0.0f, gates, G);
    if (!st) {
        int failed = 0;
        memcpy(c_run, c0, B * H * sizeof(float));
        #pragma omp parallel num_threads(n)
        {
            const int th = omp_get_thread_num();
            int64_t j0, j1;
            slice_of(H, th, n, &j0, &j1);
            const int64_t hs = j1 - j0, w = 4 * hs;
            float *Uk = local + (size_t)th * (H * 4 * most + B * 4 * most + B * most);
            float *z = Uk + H * 4 * most, *ac_run = z + B * 4 * most;
            for (int64_t p = 0; p < H; p++)  /* this slice's columns of U, gate-major */
                for (int q = 0; q < 4; q++)
                    memcpy(Uk + p * w + q * hs, U + p * G + q * H + j0, hs * sizeof(float));
            for (int64_t t = 0; t < T && active[t] > 0; t++) {
                const int64_t a = active[t], at = off[t];
                const float *hp = t == 0 ? h0 : y + off[t - 1] * H;
                const int e = rk_gemm('N', 'N', a, w, H, 1.0f, hp, H, Uk, w, 0.0f, z, w);
                if (e) failed = e;  /* any thread's failure fails the call */
                for (int64_t r = 0; r < a; r++) {
                    const int64_t row = at + r;
                    const float *cp = (s && t > 0) ? s->cells + (off[t - 1] + r) * H + j0
                                                   : c_run + r * H + j0;
                    float *cn = s ? s->cells + row * H + j0 : c_run + r * H + j0;
                    float *ac = s ? s->act_c + row * H + j0 : ac_run + r * most;
                    slice_forward(k, hs, z + r * w, gates + row * G + j0, b ? b + j0 : NULL, cp,
                                  cn, ac, y + row * H + j0, peep ? peep + j0 : NULL);
                    if (s) memcpy(c_run + r * H + j0, cn, hs * sizeof(float));
                }
                #pragma omp barrier
            }
        }
        st = failed;
        for (int64_t r = 0; r < B; r++) {
            const int64_t len = lengths ? lengths[r] : T;
            memcpy(hT + r * H, len > 0 ? y + (off[len - 1] + r) * H : h0 + r * H,
                   H * sizeof(float));
        }
        memcpy(cT, c_run, B * H * sizeof(float));
    }
    free(local);
    free(plan);
    return st;
}

/* Backward of units [j0, j0 + hs) of one row (as lstm_kernel.c's row_backward): dh and dc of
 * the slice in (dc replaced by d of the previous cell), d(gates) into dz (the row's at j0, gate
 * q at dz + q*H) and dzk [4hs]; bias and peephole sums into db, dpeep (at j0). tmp [5hs]. */
static void slice_backward(const rk_cfg *k, int64_t hs, const float *gt, const float *c_prev,
                           const float *cn, const float *ac, const float *dm, float *dc,
                           float *dz, float *dzk, const float *peep, float *db, float *dpeep,
                           float *tmp) {
    const int64_t H = k->H;
    const float *si = gt, *sf = gt + H, *ga = gt + 2 * H, *so = gt + 3 * H;
    float *di = dzk, *df = dzk + hs, *dg = dzk + 2 * hs, *dout = dzk + 3 * hs;
    float *d_i = tmp, *d_f = tmp + hs, *d_g = tmp + 2 * hs, *d_o = tmp + 3 * hs, *d_ac = tmp + 4 * hs;
    deriv_n(k->ract, si, d_i, hs);
    deriv_n(k->ract, sf, d_f, hs);
    deriv_n(k->act, ga, d_g, hs);
    deriv_n(k->ract, so, d_o, hs);
    deriv_n(k->act, ac, d_ac, hs);
    for (int64_t j = 0; j < hs; j++) {
        dout[j] = dm[j] * ac[j] * d_o[j];
        dc[j] += dm[j] * so[j] * d_ac[j];
    }
    if (k->peephole)
        for (int64_t j = 0; j < hs; j++) {
            dc[j] += dout[j] * peep[2 * H + j];
            dpeep[2 * H + j] += dout[j] * cn[j];
        }
    if (k->cell_clip > 0.0f) {
        const float cc = k->cell_clip;
        for (int64_t j = 0; j < hs; j++) dc[j] = fabsf(cn[j]) < cc ? dc[j] : 0.0f;
    }
    for (int64_t j = 0; j < hs; j++) {
        float d = dc[j];
        di[j] = d * ga[j] * d_i[j];
        df[j] = d * c_prev[j] * d_f[j];
        dg[j] = d * si[j] * d_g[j];
        dc[j] = d * sf[j];
    }
    if (k->peephole)
        for (int64_t j = 0; j < hs; j++) {
            dc[j] += di[j] * peep[j] + df[j] * peep[H + j];
            dpeep[j] += di[j] * c_prev[j];
            dpeep[H + j] += df[j] * c_prev[j];
        }
    for (int q = 0; q < 4; q++)
        for (int64_t j = 0; j < hs; j++) {
            dz[q * H + j] = dzk[q * hs + j];
            if (db) db[q * H + j] += dzk[q * hs + j];
        }
}

int lstm_backward_units(const rk_cfg *k, const int64_t *lengths, const float *x,
                        const float *h0, const float *c0, const float *W, const float *Ut,
                        const float *peep, const float *y, const rk_saved *s, const float *dy,
                        float *dh, float *dc, float *dx, float *dW, float *dU, float *db,
                        float *dpeep, float *scratch) {
    const int64_t T = k->T, B = k->B, D = k->D, H = k->H, G = 4 * H;
    const int n = lstm_units_threads(k);
    const int64_t most = H / n + 1, per = 4 * most * H + B * 4 * most + 5 * most;
    int64_t *plan = plan_rows(lengths, B, T);
    float *local = malloc(((size_t)n * per + 2 * (size_t)n * B * H) * sizeof(float));
    int st = (plan && local) ? 0 : -1;
    const int64_t *active = plan, *off = plan + T, N = plan ? off[T] : 0;
    float *dz = scratch, *h_in = dz + N * G, *partial = local + (size_t)n * per;
    if (db) memset(db, 0, G * sizeof(float));
    if (dpeep) memset(dpeep, 0, 3 * H * sizeof(float));
    if (!st) {
        int failed = 0;
        #pragma omp parallel num_threads(n)
        {
            const int th = omp_get_thread_num();
            int64_t j0, j1;
            slice_of(H, th, n, &j0, &j1);
            const int64_t hs = j1 - j0, w = 4 * hs;
            float *Utk = local + (size_t)th * per, *dzk = Utk + 4 * most * H, *tmp = dzk + B * 4 * most;
            for (int q = 0; q < 4; q++)  /* this slice's rows of U^T, gate-major */
                memcpy(Utk + q * hs * H, Ut + (q * H + j0) * H, hs * H * sizeof(float));
            int buf = 0;
            for (int64_t t = T - 1; t >= 0; t--) {
                const int64_t a = active[t], at = off[t];
                if (a == 0) continue;
                for (int64_t r = 0; r < a; r++) {
                    const int64_t row = at + r;
                    float *dhr = dh + r * H + j0;
                    for (int64_t j = 0; j < hs; j++) dhr[j] += dy[row * H + j0 + j];
                    const float *cp = t == 0 ? c0 + r * H + j0 : s->cells + (off[t - 1] + r) * H + j0;
                    slice_backward(k, hs, s->gates + row * G + j0, cp, s->cells + row * H + j0,
                                   s->act_c + row * H + j0, dhr, dc + r * H + j0, dz + row * G + j0,
                                   dzk + r * w, peep ? peep + j0 : NULL, db ? db + j0 : NULL,
                                   dpeep ? dpeep + j0 : NULL, tmp);
                }
                float *mine = partial + ((size_t)buf * n + th) * B * H;
                const int e = rk_gemm('N', 'N', a, H, w, 1.0f, dzk, w, Utk, H, 0.0f, mine, H);
                if (e) failed = e;  /* any thread's failure fails the call */
                #pragma omp barrier
                for (int64_t r = 0; r < a; r++)
                    for (int64_t j = j0; j < j1; j++) {
                        float sum = 0.0f;
                        for (int other = 0; other < n; other++)
                            sum += partial[((size_t)buf * n + other) * B * H + r * H + j];
                        dh[r * H + j] = sum;
                    }
                buf ^= 1;
            }
        }
        st = failed;
        for (int64_t t = 0; t < T && active[t] > 0; t++)
            memcpy(h_in + off[t] * H, t == 0 ? h0 : y + off[t - 1] * H,
                   active[t] * H * sizeof(float));
        if (!st && dx) st = rk_gemm('N', 'T', N, D, G, 1.0f, dz, G, W, G, 0.0f, dx, D);
        if (!st) st = rk_gemm('T', 'N', D, G, N, 1.0f, x, D, dz, G, 0.0f, dW, G);
        if (!st) st = rk_gemm('T', 'N', H, G, N, 1.0f, h_in, H, dz, G, 0.0f, dU, G);
    }
    free(local);
    free(plan);
    return st;
}
