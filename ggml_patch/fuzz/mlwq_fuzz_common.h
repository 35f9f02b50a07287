// Shared part of the MLWQ fuzz targets (fuzz_mlwq_rows.c, fuzz_mlwq_gguf.cpp): an independent
// reference of ggml_patch/FORMAT.md (header rules, bit planes, dequantization, dot product), and
// the checks that run ggml's MLWQ functions on fuzzed bytes and compare them with it.
//
// Any disagreement, and any sanitizer report, is a crash: FUZZ_FAIL prints what differs and aborts.
#pragma once

#include "ggml.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// once per process: the CPU fp16 table the kernels read (what ggml_cpu_init does), logs off,
// reports to the stderr that libFuzzer had at start (-close_fd_mask=2 hides ggml's own prints);
// checks the reference's 256 scales against ggml_mlwq_scale (bit for bit)
void mlwq_fuzz_init(void);
// ggml's log messages since the last mlwq_fuzz_log_clear (kept, not printed; the first 4 KiB)
const char * mlwq_fuzz_log(void);
void mlwq_fuzz_log_clear(void);
// MLWQ_FUZZ_SELFTEST=1 in the environment: every input fails a check (tests that failures are caught)
extern bool mlwq_fuzz_selftest;
// MLWQ_FUZZ_VERBOSE=1: the targets print "mlwq-fuzz verdict: ..." for each input (tests read it)
void mlwq_fuzz_verdict(const char * what);
// MLWQ_FUZZ_MAX_ROWS=N: the gguf target runs the kernels on at most N rows per tensor (default: all)
extern int64_t mlwq_fuzz_max_rows;

void mlwq_fuzz_fail(const char * file, int line, const char * fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
#define FUZZ_FAIL(...) mlwq_fuzz_fail(__FILE__, __LINE__, __VA_ARGS__)
#define FUZZ_CHECK(cond, ...) do { if (!(cond)) { FUZZ_FAIL(__VA_ARGS__); } } while (0)

// ---- reference (FORMAT.md, written without looking at ggml-mlwq.c) ------------------------------
// Format version 2: a row of K = ne0/64 blocks is K*(2 + 8b) bytes, K headers of 2 bytes
// [u8 s][u8 zero | (bits - 1) << 5] first, d = 2^(s/8 - 20) (every code valid).
int    mlwq_ref_width(int type);                               // 2, 3, 4 for MLWQ2/3/4 (143..145), else 0
size_t mlwq_ref_row_bytes(int64_t K, int b);                   // K*(2 + 8b)
int    mlwq_ref_bits(const uint8_t * row, int64_t j);          // header j's width, 1..8
int    mlwq_ref_zero(const uint8_t * row, int64_t j);          // header j's zero point, 0..31
float  mlwq_ref_scale(uint8_t s);                              // float32(2^(s/8 - 20)), from exp2 in double
float  mlwq_ref_fp16(uint16_t h);                              // exact IEEE half -> float (q8_1 scales)
// codes of one row (uint8 [ne0]); returns the number of blocks decoded: decoding stops at the first
// header whose codes end past the row; later blocks get code 0
int64_t mlwq_ref_decode_row(const uint8_t * row, int64_t ne0, int b, uint8_t * q);
bool   mlwq_ref_validate_rows(int type, const uint8_t * data, size_t nbytes, int64_t ne0, int64_t nrows);
bool   mlwq_ref_validate_perm(const uint8_t * perm_le, int64_t n);

// ---- checks against ggml ---------------------------------------------------------------------
// ggml_mlwq_validate_rows == reference verdict (returns it). data holds exactly nbytes.
bool mlwq_fuzz_check_validate(enum ggml_type type, const uint8_t * data, size_t nbytes, int64_t ne0, int64_t nrows);
// ggml_mlwq_validate_perm == reference verdict (returns it). perm holds exactly 4*n bytes.
bool mlwq_fuzz_check_perm(const uint8_t * perm, int64_t n);
// One row of an MLWQ type (any bytes, valid or not), copied to a buffer of exactly its size:
// dequantize_row_mlwq<b> (bit exact), ggml_mlwq_unpack_row (exact), the CPU vec_dot (SIMD build
// and portable loop, against a float64 sum) against the reference. y: 2*ne0/64 q8_1 blocks.
void mlwq_fuzz_check_row(enum ggml_type type, const uint8_t * row, int64_t ne0, const void * y_q8_1);
// vec_dot with nrc = 2 (type traits nrows = 2): rows[0..1] (2 rows, contiguous) x 2 q8_1 columns (contiguous)
void mlwq_fuzz_check_rows2(enum ggml_type type, const uint8_t * rows, int64_t ne0, const void * y_q8_1_2cols);
// ggml_mlwq_gemm (what mul_mat runs through llamafile_sgemm) on nrows contiguous rows x ncols q8_1 columns, 1 and 2 threads
void mlwq_fuzz_check_gemm(enum ggml_type type, const uint8_t * rows, int64_t nrows, int64_t ne0, const void * ys, int64_t ncols);
// the rows as three groups of 8 repacked rows (x86 builds; called by mlwq_fuzz_check_gemm)
void mlwq_fuzz_check_x8(enum ggml_type type, const uint8_t * rows, int64_t nrows, int64_t ne0, const void * ys, int64_t ncols);

#ifdef __cplusplus
}
#endif
