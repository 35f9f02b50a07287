// What the MLWQ kernels of mlwq-mmvq.cu, mlwq-quantize.cu and mlwq-convert.cu share: the block
// header, the code words, the walk of a row's headers, and the node tests of the graph-loop
// fusions. Byte format: ggml_patch/FORMAT.md. Design notes: ggml_patch/CUDA.md.
//
// Every code read is bounds-checked against the row's fixed code area (8*K*b bytes): as on the
// CPU, from the first block whose codes would end past the row, blocks read as 0.
#pragma once

#include "mlwq.cuh"

#include "ggml-mlwq.h"

#define MLWQ_QK           QK_MLWQ                // 64 columns per block
#define MLWQ_HDR_BYTES    GGML_MLWQ_HEADER_SIZE  // u8 scale code | u8 (zero | (bits - 1) << 5)
#define MLWQ_WARPS        4                      // warps per CTA (mat-vec); rows per CTA in dequantization

static_assert(MLWQ_QK == 2*QK8_1, "an MLWQ block spans two q8_1 blocks");

static inline int mlwq_avg_bits(const ggml_type type) {
    const int b = ggml_mlwq_type_width(type);
    GGML_ASSERT(b > 0 && "not an MLWQ type");
    return b;
}

// ---------------------------------------------------------------------------------------------
// device helpers

// Code words, read as two 16-bit halves: a row is K*(2 + 8b) bytes, so with K odd every other
// row's code area is 2 but not 4-byte aligned.
struct mlwq_words {
    const uint16_t * p;
    __device__ __forceinline__ int operator[](const int i) const {
        return (int) ((uint32_t) p[2*i] | (uint32_t) p[2*i + 1] << 16);
    }
    __device__ __forceinline__ mlwq_words operator+(const int i) const { return { p + 2*i }; }
};

// A 64-column block is 16 groups of 4 columns; group g = columns 4g..4g+3, as 4 byte-codes in a
// word (low byte = lowest column).
// Group g in each plane (FORMAT.md's byte layouts, no shuffling):
//   4-bit plane (8 words): word g & 7, nibble g < 8 ? low : high
//   2-bit plane (4 words): word g & 3, bits 2*(g >> 2) of each byte
//   1-bit plane (2 words): word g & 1, bit g >> 1 of each byte

// a block header h = byte 0 | byte 1 << 8 (ggml-mlwq.h): scale code, then zero | (bits - 1) << 5
static __device__ __forceinline__ int mlwq_hdr_bits(const uint32_t h) {
    return (int) ((h >> 13) & 7) + 1;
}

static __device__ __forceinline__ int mlwq_hdr_zero(const uint32_t h) {
    return (int) ((h >> 8) & GGML_MLWQ_ZERO_MAX);
}

// d = 2^(s/8 - 20), the same exact float32 product as ggml_mlwq_scale
static __device__ __forceinline__ float mlwq_hdr_d(const uint32_t h) {
    const int s = (int) (h & 0xFF);
    float m;
    switch (s & 7) {
        case 0:  m = 0x1.000000p+0f; break;
        case 1:  m = 0x1.172b84p+0f; break;
        case 2:  m = 0x1.306fe0p+0f; break;
        case 3:  m = 0x1.4bfdaep+0f; break;
        case 4:  m = 0x1.6a09e6p+0f; break;
        case 5:  m = 0x1.8ace54p+0f; break;
        case 6:  m = 0x1.ae89fap+0f; break;
        default: m = 0x1.d5818ep+0f; break;
    }
    return m * __int_as_float(((s >> 3) + GGML_MLWQ_SCALE_EXP0 + 127) << 23);
}

// Locate this lane's block (one lane per block) in a round: returns its width, or 0 if the block
// does not exist or must read as 0, and its byte offset in the code area; advances carry (a sum
// of widths) by the round's total. As on the CPU (ggml-mlwq.c), from the first corrupt header on
// (codes ending past the row) every block reads as 0: `dead` carries that
// across rounds. All lanes of the warp call it together.
static __device__ __forceinline__ int mlwq_locate(const uint32_t h, const bool exists, const int code_bytes,
                                                  int & carry, bool & dead, int & off) {
    const int  lane = threadIdx.x;
    const int  wraw = exists ? mlwq_hdr_bits(h) : 0;
    const bool wok  = wraw >= GGML_MLWQ_MIN_BITS && wraw <= GGML_MLWQ_MAX_BITS;
    const int  w    = exists && wok ? wraw : 0;
    int incl = w;
#pragma unroll
    for (int delta = 1; delta < WARP_SIZE; delta <<= 1) {
        const int t = __shfl_up_sync(0xFFFFFFFF, incl, delta, WARP_SIZE);
        if (lane >= delta) {
            incl += t;
        }
    }
    const int total = __shfl_sync(0xFFFFFFFF, incl, WARP_SIZE - 1, WARP_SIZE);
    off    = 8*(carry + incl - w);
    carry += total;
    const bool bad = exists && (!wok || off + 8*w > code_bytes);
    const uint32_t bad_mask = __ballot_sync(0xFFFFFFFF, bad);
    const bool ok = exists && !dead && (bad_mask & (0xFFFFFFFFu >> (WARP_SIZE - 1 - lane))) == 0;
    dead = dead || bad_mask != 0;
    return ok ? w : 0;
}

// ---------------------------------------------------------------------------------------------
// node tests of the graph-loop fusions (mlwq-mmvq.cu, mlwq-quantize.cu)

// a permuted MLWQ product of one token: MUL_MAT of a 2-D MLWQ weight with its permutation, f32 in and out
static inline bool mlwq_is_permuted_mat_vec(const ggml_tensor * mm) {
    const ggml_tensor * perm = ggml_mlwq_mul_mat_perm(mm);
    if (perm == nullptr || perm->type != GGML_TYPE_I32) {
        return false;
    }
    const ggml_tensor * w = mm->src[0];
    const ggml_tensor * x = mm->src[1];
    return x->type == GGML_TYPE_F32 && mm->type == GGML_TYPE_F32 && w->ne[2] == 1 && w->ne[3] == 1 &&
           x->ne[1] == 1 && x->ne[2] == 1 && x->ne[3] == 1;
}

// a product that a GLU within the next few nodes takes: the fused gate/up path quantizes for it
static inline bool mlwq_feeds_glu(ggml_tensor * const * nodes, const int n_nodes, const int i) {
    for (int j = i + 1; j < n_nodes && j <= i + 4; ++j) {
        if (nodes[j]->op == GGML_OP_GLU && (nodes[j]->src[0] == nodes[i] || nodes[j]->src[1] == nodes[i])) {
            return true;
        }
    }
    return false;
}

// whether the memory of two tensors overlaps
static inline bool mlwq_overlap(const ggml_tensor * a, const ggml_tensor * b) {
    const char * a0 = (const char *) a->data;
    const char * b0 = (const char *) b->data;
    return a0 < b0 + ggml_nbytes(b) && b0 < a0 + ggml_nbytes(a);
}

static inline bool mlwq_ahead_candidate(ggml_tensor * const * nodes, const int n_nodes, const int i) {
    const ggml_tensor * t = nodes[i];
    return t->op == GGML_OP_MUL_MAT && (t->flags & GGML_TENSOR_FLAG_COMPUTE) && mlwq_is_permuted_mat_vec(t) &&
           !mlwq_feeds_glu(nodes, n_nodes, i);
}
