/* rnnkit's own fused GRU (both reset variants) and vanilla RNN, for activations oneDNN lacks
 * (hard_sigmoid gates of Keras 2 files, relu or softsign candidates...), forward (gru_forward.c)
 * and backward (gru_backward.c) over a whole packed sequence in one call, as the LSTM's (lstm.h:
 * layouts, packing, sgemm, and batches split between threads where U stays in each core's
 * cache: kernels.h's run_split); this header holds what both sources read.
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
#ifndef RNNKIT_GRU_H
#define RNNKIT_GRU_H

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
static inline int split_batch(const rk_gru_cfg *k) {
    return !k->hmask && split_rows(k->B, k->H * gates_of(k) * (int64_t)sizeof(float));
}

#endif
