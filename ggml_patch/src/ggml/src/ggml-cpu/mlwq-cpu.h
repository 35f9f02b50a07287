// MLWQ types, CPU part (see mlwq-cpu.c)
#pragma once

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void ggml_vec_dot_mlwq2_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_mlwq3_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_mlwq4_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// The whole product of an MLWQ matrix with q8_1 activations for thread ith of nth, hooked into
// llamafile_sgemm (same arguments: m rows of A, n columns of B and C, k blocks of 64, leading dimensions
// lda in MLWQ blocks, ldb in q8_1 blocks, ldc in floats). Tiles of up to 4 rows x 4 columns share
// activation loads and decoded codes; generation (n = 1) included. From 6 columns on, x86 builds take
// panels of 16 (AVX-512) or 8 (AVX2) rows decoded once into a per-thread scratch. Returns false (ggml
// falls back to vec_dot) for other types, activations not in q8_1 yet, or a build without AVX2 or NEON.
GGML_BACKEND_API bool ggml_mlwq_gemm(int ith, int nth, int64_t m, int64_t n, int64_t k, const void * A, int64_t lda,
                                     const void * B, int64_t ldb, void * C, int64_t ldc, int Atype, int Btype, int Ctype);

// The activations of an MLWQ product whose node carries a column permutation (ggml_mlwq_mul_mat):
// y = from_float(x[perm[0]], ..., x[perm[n-1]]) in vec_dot_type, n a multiple of its block size.
// Called by ggml_compute_forward_mul_mat instead of from_float, on each thread's share of a row
// (perm and y at that share's start, x at the row's start).
GGML_BACKEND_API void ggml_mlwq_from_float_permuted(enum ggml_type vec_dot_type, ggml_from_float_t from_float,
                                                    const float * GGML_RESTRICT x, const int32_t * GGML_RESTRICT perm,
                                                    int64_t n, void * GGML_RESTRICT y);

// Repacked rows (FORMAT.md, "Repacked rows (CPU)"): groups of 8 rows interleaved so that a shift and a
// mask give 4 columns of all 8 rows in int32 lanes. Built for x86 with AVX2 or AVX-512 VNNI (what
// ggml_mlwq_x8_available says); ggml's CPU_REPACK buffer lays MLWQ weights out so (mlwq-repack.cpp).
GGML_BACKEND_API bool ggml_mlwq_x8_available(void);
// src: nrows rows of ne0 columns of MLWQb (b = 2, 3, 4) -> dst, the same number of bytes. False (dst
// untouched) unless nrows % 8 == 0 and every group of 8 rows has one width per block and no unreadable
// block (format 2 allows others: those tensors keep their rows).
GGML_BACKEND_API bool ggml_mlwq_x8_pack(int b, int64_t ne0, int64_t nrows, const void * src, void * dst);
// C = A B for thread ith of nth: A repacked (m rows, m % 8 == 0, k blocks of 64), B n columns of q8_1
// (ldb blocks apart), C[c*ldc + r]; the threads share the groups of 8 rows (AVX-512 prompts: pairs of them)
GGML_BACKEND_API void ggml_mlwq_x8_gemm(int ith, int nth, int b, int64_t m, int64_t n, int64_t k, const void * A,
                                        const void * B, int64_t ldb, float * C, int64_t ldc);

// the portable loop, whatever the build targets (for tests comparing it with the SIMD path)
GGML_BACKEND_API void ggml_vec_dot_mlwq_q8_1_generic(int n, float * GGML_RESTRICT s, int b, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy);

// the kernel this build runs (chosen at compile time): "avx512-vnni", "avx2", "avx2-vnni", "neon-dotprod",
// "neon" (AArch64 without dotprod) or "scalar"
GGML_BACKEND_API const char * ggml_mlwq_cpu_kernel(void);

#ifdef __cplusplus
}
#endif
