// MLWQ tensor types: per-layer code width b in {2, 3, 4}, per-64-column-block widths 1..8.
// The byte layout is defined in mlwq's ggml_patch/FORMAT.md (and exporters/mlwq_format.py).
//
//   format version 2: a row of an MLWQb tensor with ne0 columns (K = ne0/64 blocks), exactly
//   K*(2 + 8*b) bytes:
//   [K headers: u8 s | u8 (zero | (bits - 1) << 5)][codes of block 0] ... [codes of block K-1][zero padding]
//   block j codes: 8*bits_j bytes, bit planes low bits first, planes greedy 4, 2, 1
//   d_j = 2^(s_j/8 - 20) as the exact float32 product ggml_mlwq_scale(s_j)
//   w(permuted column 64*j + i) = d_j * (float) ((int) q - (int) zero_j)
//
//   format version 3 (what mlwq-export writes; files only): a row of an MLWQb_V3 tensor is
//   K*(1 + 8*b) bytes, [K headers: u8 (c | zero << 4)][codes and padding as format 2], with the
//   row's scale code r in `<base>.mlwq_scale` (I8 [nrows], read unsigned), the block widths in
//   `<base>.mlwq_bits` (I8 [K]) and the permutation as I16; block j's scale code is r - 4*c_j.
//   The llama loader expands it to format 2 rows as it reads the file (ggml_mlwq_expand_v3), so
//   the kernels only ever see format 2.
//
// Rows are not sequences of independent blocks (block j's codes start after the codes of blocks
// 0..j-1), so every function here works on whole rows and is told ne0.
#pragma once

#include "ggml.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GGML_MLWQ_FORMAT_VERSION 3        // the newest file format (mlwq-export's)
#define GGML_MLWQ_FORMAT_VERSION_MIN 2    // format 2 files still load: they are the kernels' rows
#define GGML_MLWQ_KEY_FORMAT_VERSION "mlwq.format_version"
#define GGML_MLWQ_PERM_SUFFIX "mlwq_perm"
#define GGML_MLWQ_SCALE_SUFFIX "mlwq_scale" // format 3: I8 [nrows], each row's scale code
#define GGML_MLWQ_BITS_SUFFIX "mlwq_bits"   // format 3: I8 [K], the block widths
#define GGML_MLWQ_V3_HEADER_SIZE 1
#define GGML_MLWQ_V3_SCALE_STEP 4           // a header's scale step: 4 codes of the grid, half an octave
#define GGML_MLWQ_V3_ZERO_MAX 15
#define QK_MLWQ 64
#define GGML_MLWQ_HEADER_SIZE 2
#define GGML_MLWQ_MIN_BITS 1
#define GGML_MLWQ_MAX_BITS 8
#define GGML_MLWQ_ZERO_MAX 31
#define GGML_MLWQ_SCALE_EXP0 (-20)
// format version 1's type ids (4-byte headers): refused by name when a file holds them
#define GGML_MLWQ_V1_TYPE_FIRST 140
#define GGML_MLWQ_V1_TYPE_LAST  142

// A block header is 2 bytes (all K headers at the start of the row): the scale code s, then the
// zero point in bits 0-4 and the width minus 1 in bits 5-7.
static inline int ggml_mlwq_hdr_bits(const uint8_t * h) { return (h[1] >> 5) + 1; }
static inline int ggml_mlwq_hdr_zero(const uint8_t * h) { return h[1] & GGML_MLWQ_ZERO_MAX; }

// d = 2^(s/8 - 20): the mantissa float32(2^((s%8)/8)) times an exact power of two (2^-20 .. 2^11),
// so C, CUDA and numpy (exporters/mlwq_format.py SCALE_TABLE) hold the same bits
static inline float ggml_mlwq_scale(uint8_t s) {
    static const float mant[8] = { 0x1.000000p+0f, 0x1.172b84p+0f, 0x1.306fe0p+0f, 0x1.4bfdaep+0f,
                                   0x1.6a09e6p+0f, 0x1.8ace54p+0f, 0x1.ae89fap+0f, 0x1.d5818ep+0f };
    const uint32_t bits = (uint32_t) ((s >> 3) + GGML_MLWQ_SCALE_EXP0 + 127) << 23;
    float p;
    memcpy(&p, &bits, sizeof(p));
    return mant[s & 7] * p;
}
static inline float ggml_mlwq_hdr_scale(const uint8_t * h) { return ggml_mlwq_scale(h[0]); }

static inline bool ggml_mlwq_is_type(enum ggml_type type) {
    return type == GGML_TYPE_MLWQ2 || type == GGML_TYPE_MLWQ3 || type == GGML_TYPE_MLWQ4;
}

// format version 3's file types (never in a graph: the loader expands them)
static inline bool ggml_mlwq_is_v3_type(enum ggml_type type) {
    return type == GGML_TYPE_MLWQ2_V3 || type == GGML_TYPE_MLWQ3_V3 || type == GGML_TYPE_MLWQ4_V3;
}

// the type a format 3 type expands to (MLWQb_V3 -> MLWQb); GGML_TYPE_COUNT for any other type
static inline enum ggml_type ggml_mlwq_v3_runtime_type(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_MLWQ2_V3: return GGML_TYPE_MLWQ2;
        case GGML_TYPE_MLWQ3_V3: return GGML_TYPE_MLWQ3;
        case GGML_TYPE_MLWQ4_V3: return GGML_TYPE_MLWQ4;
        default:                 return GGML_TYPE_COUNT;
    }
}

// code width b of the type (2, 3, 4), 0 for any other type
static inline int ggml_mlwq_type_width(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_MLWQ2: return 2;
        case GGML_TYPE_MLWQ3: return 3;
        case GGML_TYPE_MLWQ4: return 4;
        default:              return 0;
    }
}

// bytes of one row of K blocks of an MLWQb tensor: K headers of 2 bytes, 8*K*b bytes of codes and padding
static inline size_t ggml_mlwq_row_bytes(int64_t K, int b) {
    return (size_t) K * (GGML_MLWQ_HEADER_SIZE + 8*(size_t) b);
}

// The readers' rule for corrupt rows: a block of width `bits` whose codes start at byte `off` of a
// row of `row_bytes` bytes can be read if 1 <= bits <= 8 and its codes end inside the row. From the
// first block that cannot, the rest of the row reads as 0 (to_float, unpacking, the CPU and CUDA
// products), so no reader ever leaves the row.
static inline bool ggml_mlwq_block_readable(int bits, size_t off, size_t row_bytes) {
    return bits >= GGML_MLWQ_MIN_BITS && bits <= GGML_MLWQ_MAX_BITS && off + 8*(size_t) bits <= row_bytes;
}

// bit planes of a block of width `bits` (1..8), low bits first; returns the number of planes (<= 3)
static inline int ggml_mlwq_planes(int bits, int planes[3]) {
    int n = 0;
    while (bits >= 4 && n < 3) { planes[n++] = 4; bits -= 4; }
    if (bits >= 2 && n < 3)    { planes[n++] = 2; bits -= 2; }
    if (bits == 1 && n < 3)    { planes[n++] = 1; }
    return n;
}

// to_float of the type traits: x is ONE row of k elements (k % 64 == 0). Never reads past the
// k/64*(2+8b) bytes of the row; blocks after a corrupt header (codes past the row end) dequantize to 0.
GGML_API void dequantize_row_mlwq2(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_mlwq3(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_mlwq4(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

// codes of one block of width `bits` (1..8) from its 8*bits bytes; q gets 64 values (the portable
// decoder: to_float, unpack_row and the CPU backend's scalar dot product use it)
GGML_API void ggml_mlwq_decode_block(const uint8_t * GGML_RESTRICT c, int bits, uint8_t * GGML_RESTRICT q);

// codes of one row (uint8 [k], permuted column order); same safety rules as dequantize_row_*
GGML_API void ggml_mlwq_unpack_row(const void * GGML_RESTRICT x, uint8_t * GGML_RESTRICT q, int64_t k, int b);

// Full check of an MLWQ tensor: nbytes == nrows * row size, and for every row:
// zero <= 2^bits - 1, sum(bits) <= K*b, padding after the codes all zero.
// Returns true if valid; otherwise false with a message (row, block, what) in err.
GGML_API bool ggml_mlwq_validate_rows(enum ggml_type type, const void * data, size_t nbytes,
                                      int64_t ne0, int64_t nrows, char * err, size_t err_size);

// Check of a column permutation: n entries, each in 0..n-1, no repeats.
GGML_API bool ggml_mlwq_validate_perm(const int32_t * perm, int64_t n, char * err, size_t err_size);

// Format 3 -> format 2. data: nbytes of an MLWQb_V3 tensor (nrows rows of ne0 columns), row_scale
// [nrows], bits [K]. Checks everything the format 2 rows need (widths 1..8, their sum <= K*b, every
// zero <= 2^bits - 1, every scale code r - 4*c >= 0, zero padding) and writes the MLWQb rows
// (nrows * K*(2+8b) bytes) to out unless out is NULL. Returns false with a message in err.
GGML_API bool ggml_mlwq_expand_v3(enum ggml_type type, const void * data, size_t nbytes, int64_t ne0, int64_t nrows,
                                  const uint8_t * row_scale, const uint8_t * bits, void * out,
                                  char * err, size_t err_size);

// Format 3's I16 permutation (entries read as unsigned) -> I32, checked as ggml_mlwq_validate_perm.
GGML_API bool ggml_mlwq_expand_perm16(const uint16_t * perm, int64_t n, int32_t * out, char * err, size_t err_size);

// y = W x for an MLWQ weight a whose input columns are permuted: a MUL_MAT node that carries the
// permutation perm (I32 [ne0], permuted column j = original column perm[j]) as its source
// GGML_MLWQ_PERM_SRC. The backends that run MLWQ (CPU, CUDA) read x[perm[j]] while they quantize the
// activations for the product, so the permutation costs no node, no kernel and no copy. With
// perm == NULL this is ggml_mul_mat (x already in the permuted order: the kernel tests use it).
// Slot 3, not 2: MUL_MAT_ID keeps its expert ids in src[2], and code that handles both ops reads
// src[2] as ids.
#define GGML_MLWQ_PERM_SRC 3
GGML_API struct ggml_tensor * ggml_mlwq_mul_mat(struct ggml_context * ctx, struct ggml_tensor * a,
                                                struct ggml_tensor * b, struct ggml_tensor * perm);

// the column permutation of an MLWQ MUL_MAT node, NULL for any other node
static inline const struct ggml_tensor * ggml_mlwq_mul_mat_perm(const struct ggml_tensor * node) {
    return node->op == GGML_OP_MUL_MAT && ggml_mlwq_is_type(node->src[0]->type) ? node->src[GGML_MLWQ_PERM_SRC] : NULL;
}

#ifdef __cplusplus
}
#endif
