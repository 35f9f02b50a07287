// libFuzzer target (a): MLWQ rows straight into ggml's validation, to_float, unpacking and the CPU
// vec_dot. The validators must agree with the reference of FORMAT.md (mlwq_fuzz_common.c); the
// kernels must give the reference's values on any bytes (blocks from the first corrupt header on
// read as 0) and never touch a byte outside the row (every buffer is allocated at its exact size).
//
// Input (all modes read past the end as zeros where said):
//   byte 0   mode % 4
//   mode 0   rows: byte 1 type = MLWQ2 + v%3, byte 2 K = 1 + v%32 blocks (ne0 = 64K), byte 3 nrows = v%5,
//            then nrows rows of K*(2+8b) bytes (zero-filled if short), then 2K q8_1 activation blocks
//            (36 bytes each, zero-filled if short; qs -128 read as -127, which is all ggml's q8_1
//            quantizer writes). Runs validate_rows, ggml_validate_row_data (what
//            --check-tensors calls), and the kernels on every row, valid or not, and vec_dot
//            with 2 rows x 2 columns a call (rows 0+1, 2+3) as mul_mat does with nrows = 2, and
//            ggml_mlwq_gemm (llamafile_sgemm's MLWQ case) over all rows x 11 columns.
//   mode 1   shapes: byte 1 type = MLWQ2 + v%3, bytes 2-3 ne0 (int16), byte 4 nrows (int8), the rest
//            is the tensor (nbytes = its length). validate_rows must refuse any mismatch.
//   mode 2   permutation: bytes 1.. are int32 entries (n = length/4).
//   mode 3   other type ids: bytes 1-4 type (int32), bytes 5-6 ne0 (int16), the rest the data
//            (format version 1's ids 140..142 are not MLWQ types: validate_rows must refuse them).
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "mlwq_fuzz_common.h"

#include "ggml.h"
#include "ggml-mlwq.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int * argc, char *** argv) {
    (void) argc; (void) argv;
    mlwq_fuzz_init();
    return 0;
}

static uint8_t * exact_copy(const uint8_t * src, size_t avail, size_t n) {
    uint8_t * p = (uint8_t *) malloc(n ? n : 1);
    memset(p, 0, n);
    memcpy(p, src, avail < n ? avail : n);
    return p;
}

// activations as ggml's q8_1 quantizer writes them: int8 codes in -127..127 (round(x*127/amax)),
// never -128; the SIMD kernels may rely on it (Q4_0-style sign tricks)
static void q8_1_domain(uint8_t * y, int64_t nblocks) {
    for (int64_t i = 0; i < nblocks; ++i) {
        block_q8_1 * yb = (block_q8_1 *) (y + (size_t) i * sizeof(block_q8_1));
        for (int k = 0; k < QK8_1; ++k) {
            yb->qs[k] = yb->qs[k] == -128 ? -127 : yb->qs[k];
        }
    }
}

static void rows_mode(const uint8_t * data, size_t size) {
    const uint8_t * h = data;
    uint8_t hdr[4] = {0, 0, 0, 0};
    memcpy(hdr, h, size < 4 ? size : 4);
    const enum ggml_type type = (enum ggml_type) (GGML_TYPE_MLWQ2 + hdr[1] % 3);
    const int     b         = ggml_mlwq_type_width(type);
    const int64_t K         = 1 + hdr[2] % 32;
    const int64_t ne0       = K * QK_MLWQ;
    const int64_t nrows     = hdr[3] % 5;
    const size_t  row_bytes = mlwq_ref_row_bytes(K, b);
    const size_t  nbytes    = (size_t) nrows * row_bytes;
    const uint8_t * p   = data + (size < 4 ? size : 4);
    size_t        left  = size < 4 ? 0 : size - 4;

    // the tensor, allocated at exactly nbytes (malloc(0) for no rows: any read is an overflow)
    uint8_t * t = (uint8_t *) malloc(nbytes);
    memset(t, 0, nbytes);
    memcpy(t, p, left < nbytes ? left : nbytes);
    p    += left < nbytes ? left : nbytes;
    left -= left < nbytes ? left : nbytes;
    const size_t y_bytes = (size_t) (2*K) * sizeof(block_q8_1);
    uint8_t * y = exact_copy(p, left, y_bytes);
    q8_1_domain(y, 2*K);

    const bool valid = mlwq_fuzz_check_validate(type, t, nbytes, ne0, nrows);

    // --check-tensors: ggml_validate_row_data sees the tensor's bytes and checks the first header
    const bool first_ok = ggml_validate_row_data(type, t, nbytes);
    if (nrows > 0) {
        const int zero = mlwq_ref_zero(t, 0), bits = mlwq_ref_bits(t, 0);
        const bool want = zero < (1 << bits);
        FUZZ_CHECK(first_ok == want, "ggml_validate_row_data(mlwq%d) = %d, first header (s %d zero %d bits %d) says %d",
                   b, first_ok, t[0], zero, bits, want);
        FUZZ_CHECK(!valid || first_ok, "validate_rows accepts what ggml_validate_row_data refuses");
    }

    for (int64_t r = 0; r < nrows; ++r) {
        mlwq_fuzz_check_row(type, t + (size_t) r * row_bytes, ne0, y);
    }
    // 2 rows x 2 columns per call (prompt processing): the second column is the first one
    // rotated by one q8_1 block
    if (nrows >= 2) {
        uint8_t * y2 = (uint8_t *) malloc(2*y_bytes);
        memcpy(y2, y, y_bytes);
        memcpy(y2 + y_bytes, y + sizeof(block_q8_1), y_bytes - sizeof(block_q8_1));
        memcpy(y2 + 2*y_bytes - sizeof(block_q8_1), y, sizeof(block_q8_1));
        for (int64_t r = 0; r + 1 < nrows; r += 2) {
            mlwq_fuzz_check_rows2(type, t + (size_t) r * row_bytes, ne0, y2);
        }
        free(y2);
    }
    // the gemm over all rows and 11 columns (column c: the first rotated by c blocks), so that 4-row
    // tiles (generation), the x86 row panels of 8 or 4 columns (prompts) and every remainder run
    if (nrows >= 1) {
        const int64_t nb = 2*K, ncol = 11;
        uint8_t * yc = (uint8_t *) malloc((size_t) ncol * y_bytes);
        for (int64_t c = 0; c < ncol; ++c) {
            for (int64_t i = 0; i < nb; ++i) {
                memcpy(yc + c*y_bytes + i*sizeof(block_q8_1), y + ((i + c) % nb)*sizeof(block_q8_1), sizeof(block_q8_1));
            }
        }
        mlwq_fuzz_check_gemm(type, t, nrows, ne0, yc, ncol);
        free(yc);
    }
    free(t);
    free(y);
}

static void shapes_mode(const uint8_t * data, size_t size) {
    uint8_t hdr[5] = {0, 0, 0, 0, 0};
    memcpy(hdr, data, size < 5 ? size : 5);
    const enum ggml_type type = (enum ggml_type) (GGML_TYPE_MLWQ2 + hdr[1] % 3);
    const int64_t ne0   = (int16_t) (hdr[2] | (hdr[3] << 8));
    const int64_t nrows = (int8_t) hdr[4];
    const size_t  n     = size < 5 ? 0 : size - 5;
    uint8_t * t = exact_copy(data + (size < 5 ? size : 5), n, n);
    if (mlwq_fuzz_check_validate(type, t, n, ne0, nrows)) {
        // accepted: n == nrows * row bytes, every row must then run cleanly
        const size_t row_bytes = nrows > 0 ? n / (size_t) nrows : 0;
        uint8_t * y = exact_copy(data, size, (size_t) (2*(ne0/QK_MLWQ)) * sizeof(block_q8_1));
        q8_1_domain(y, 2*(ne0/QK_MLWQ));
        for (int64_t r = 0; r < nrows; ++r) {
            mlwq_fuzz_check_row(type, t + (size_t) r * row_bytes, ne0, y);
        }
        free(y);
    }
    free(t);
}

static void perm_mode(const uint8_t * data, size_t size) {
    const size_t n = size / 4;
    uint8_t * perm = exact_copy(data, size, 4*n);
    mlwq_fuzz_check_perm(perm, (int64_t) n);
    free(perm);
}

static void foreign_type_mode(const uint8_t * data, size_t size) {
    uint8_t hdr[7] = {0, 0, 0, 0, 0, 0, 0};
    memcpy(hdr, data, size < 7 ? size : 7);
    const int32_t type = (int32_t) ((uint32_t) hdr[1] | ((uint32_t) hdr[2] << 8) | ((uint32_t) hdr[3] << 16) | ((uint32_t) hdr[4] << 24));
    const int64_t ne0  = (int16_t) (hdr[5] | (hdr[6] << 8));
    const size_t  n    = size < 7 ? 0 : size - 7;
    uint8_t * t = exact_copy(data + (size < 7 ? size : 7), n, n);
    FUZZ_CHECK(ggml_mlwq_is_type((enum ggml_type) type) == (mlwq_ref_width(type) != 0), "ggml_mlwq_is_type(%d)", type);
    FUZZ_CHECK(ggml_mlwq_type_width((enum ggml_type) type) == mlwq_ref_width(type), "ggml_mlwq_type_width(%d)", type);
    const int64_t row_bytes = ne0 > 0 ? (int64_t) mlwq_ref_row_bytes(ne0 / QK_MLWQ, mlwq_ref_width(type)) : 0;
    mlwq_fuzz_check_validate((enum ggml_type) type, t, n, ne0, row_bytes > 0 ? (int64_t) n / row_bytes : 1);
    free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    FUZZ_CHECK(!mlwq_fuzz_selftest, "MLWQ_FUZZ_SELFTEST=1: a deliberate failure (checks that failures are reported)");
    if (size == 0) {
        return 0;
    }
    switch (data[0] % 4) {
        case 0: rows_mode(data, size);                 break;
        case 1: shapes_mode(data, size);               break;
        case 2: perm_mode(data + 1, size - 1);         break;
        case 3: foreign_type_mode(data, size);         break;
    }
    return 0;
}
