/* rnnkit's own fused LSTM: the variants oneDNN has no primitive for (cell_clip, proj_clip,
 * layer normalization, other activations), forward (lstm_forward.c) and backward
 * (lstm_backward.c) over a whole sequence in one call; this header holds what both read.
 * Compiled on first use by rnnkit/fast/compiled.py (the two sources side by side, then one
 * library) and loaded with ctypes; every matrix product goes through oneDNN's dnnl_sgemm
 * (row-major), whose address the loader passes in.
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
 * (shared), the same for every step or one per step (per_step); candidate dropout's on act(g)
 * (gmask, one per step).
 */
#ifndef RNNKIT_LSTM_H
#define RNNKIT_LSTM_H

#include "kernels.h"

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
    const float *gmask;          /* candidate dropout (TF's LayerNormBasicLSTMCell): [T, B, H],
                                    step t's act(g) times its masks; NULL: none */
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

/* The common LSTM (tanh, sigmoid gates, no layer norm) as one pass over the units, bias
 * added here: the same equations as row_forward, without its separate passes. */
static inline int standard(const rk_cfg *k) {
    return k->act == ACT_TANH && k->ract == ACT_SIGMOID && !k->layer_norm && !k->gmask;
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
static inline int small_batch(const rk_cfg *k) {
    const int nt = omp_get_max_threads();
    return standard(k) && !k->proj && !k->hmask && nt > 1 &&
           (k->B == 1 || (k->B <= SMALL_ROWS &&
                          k->P * 4 * k->H * (int64_t)sizeof(float) <= (int64_t)SMALL_SHARE * nt));
}


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

static inline void panel_full(int64_t K, const float *restrict v, const float *restrict pan,
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

static inline void panel_part(int64_t K, const float *restrict v, const float *restrict pan,
                              int64_t w, float *restrict out) {
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

/* ---- Batches split between threads (run_split, kernels.h) ---- */
static inline int split_batch(const rk_cfg *k) {
    return !k->hmask && split_rows(k->B, (k->P * 4 * k->H + (k->proj ? k->H * k->P : 0)) *
                                       (int64_t)sizeof(float));
}

#endif
