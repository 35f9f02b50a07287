// mlwq-check: drives the C side of the MLWQ types from the tests (built by ggml_patch/build.sh).
//
//   mlwq-check dequant  TYPE NE0 NROWS rows.bin out.f32        to_float of every row (fp32 [NROWS, NE0])
//   mlwq-check dot      TYPE NE0 NROWS rows.bin x.f32 NCOL out  activations x fp32 [NCOL, NE0] quantized
//                       to q8_1 by ggml, then vec_dot of every row with every column, by the type's
//                       CPU kernel and by the portable loop: out.simd.f32, out.generic.f32 [NCOL, NROWS],
//                       out.q8_1 (the q8_1 activations, raw blocks); out.simd2.f32: the kernel called
//                       as ggml's mul_mat does with type traits nrows = 2 (2 rows x 2 columns a call;
//                       an odd last row or column by single calls); out.gemm.f32: ggml_mlwq_gemm, the
//                       tiled product mul_mat uses through llamafile_sgemm, as 2 threads (the
//                       SIMD vec_dot where the build has no gemm); out.x8.f32: the rows repacked as
//                       ggml's CPU_REPACK buffer holds them and ggml_mlwq_x8_gemm as 2 threads (prints
//                       "x8 packed"; "x8 rows" or "x8 unavailable" and the gemm's output otherwise)
//   mlwq-check validate TYPE NE0 NROWS rows.bin                 ggml_mlwq_validate_rows
//   mlwq-check perm     N perm.i32                              ggml_mlwq_validate_perm
//   mlwq-check expand   TYPE NE0 NROWS rows.bin scale.u8 bits.u8 out.bin
//                       ggml_mlwq_expand_v3: format 3 rows (TYPE mlwq2_v3 .. mlwq4_v3) with their row
//                       scale codes [NROWS] and widths [NE0/64] to format 2 rows
//
// TYPE is the ggml type name (mlwq2, mlwq3, mlwq4; expand: mlwq2_v3, mlwq3_v3, mlwq4_v3). Exit status 0 = ok / valid, 1 = invalid data
// (message on stdout), 2 = usage or I/O error.
#include "ggml.h"
#include "ggml-cpu.h"
#include "ggml-mlwq.h"
#include "mlwq-cpu.h"
#include "mlwq-tool-files.h"
#include "mlwq-tool-types.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void write_file(const char * path, const void * data, size_t size) {
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) { fprintf(stderr, "cannot write %s\n", path); exit(2); }
    fclose(f);
}

int main(int argc, char ** argv) {
    if (argc < 2) { fprintf(stderr, "usage: see the head of mlwq-check.c\n"); return 2; }
    ggml_cpu_init();
    const char * cmd = argv[1];
    char err[512];

    if (strcmp(cmd, "perm") == 0 && argc == 4) {
        const int64_t n = atoll(argv[2]);
        size_t size;
        int32_t * perm = (int32_t *) read_file(argv[3], &size);
        if (size != (size_t) n * sizeof(int32_t)) { printf("invalid: %zu bytes for %lld entries\n", size, (long long) n); return 1; }
        if (!ggml_mlwq_validate_perm(perm, n, err, sizeof(err))) { printf("invalid: %s\n", err); return 1; }
        printf("ok\n");
        return 0;
    }
    if (argc < 6) { fprintf(stderr, "usage: see the head of mlwq-check.c\n"); return 2; }
    const enum ggml_type type = parse_type(argv[2]);
    const int64_t ne0   = atoll(argv[3]);
    const int64_t nrows = atoll(argv[4]);
    size_t size;
    const uint8_t * rows = (const uint8_t *) read_file(argv[5], &size);
    const size_t row_size = ggml_row_size(type, ne0);

    if (strcmp(cmd, "expand") == 0 && argc == 9) {
        size_t ssize, bsize;
        const uint8_t * scale = (const uint8_t *) read_file(argv[6], &ssize);
        const uint8_t * bits  = (const uint8_t *) read_file(argv[7], &bsize);
        if (!ggml_mlwq_is_v3_type(type) || ssize != (size_t) nrows || bsize != (size_t) (ne0 / QK_MLWQ)) {
            fprintf(stderr, "expand needs an MLWQ format 3 type, %lld row scales and %lld widths\n", (long long) nrows, (long long) (ne0 / QK_MLWQ));
            return 2;
        }
        const size_t out_size = ggml_row_size(ggml_mlwq_v3_runtime_type(type), ne0) * (size_t) nrows;
        uint8_t * out = (uint8_t *) malloc(out_size ? out_size : 1);
        if (!ggml_mlwq_expand_v3(type, rows, size, ne0, nrows, scale, bits, out, err, sizeof(err))) { printf("invalid: %s\n", err); return 1; }
        write_file(argv[8], out, out_size);
        return 0;
    }
    if (ggml_mlwq_is_v3_type(type)) { fprintf(stderr, "%s: format 3 types have no kernels; expand them\n", argv[2]); return 2; }

    if (strcmp(cmd, "validate") == 0) {
        if (!ggml_mlwq_validate_rows(type, rows, size, ne0, nrows, err, sizeof(err))) { printf("invalid: %s\n", err); return 1; }
        printf("ok\n");
        return 0;
    }
    if (size != row_size * (size_t) nrows) { fprintf(stderr, "%zu bytes is not %lld rows of %zu\n", size, (long long) nrows, row_size); return 2; }

    if (strcmp(cmd, "dequant") == 0 && argc == 7) {
        const struct ggml_type_traits * tr = ggml_get_type_traits(type);
        float * y = (float *) malloc(sizeof(float) * (size_t) (ne0 * nrows));
        for (int64_t r = 0; r < nrows; ++r) {
            tr->to_float(rows + r*row_size, y + r*ne0, ne0);
        }
        write_file(argv[6], y, sizeof(float) * (size_t) (ne0 * nrows));
        return 0;
    }
    if (strcmp(cmd, "dot") == 0 && argc == 9) {
        size_t xsize;
        const float * x = (const float *) read_file(argv[6], &xsize);
        const int64_t ncol = atoll(argv[7]);
        if (xsize != sizeof(float) * (size_t) (ncol * ne0)) { fprintf(stderr, "x has %zu bytes, expected %lld x %lld floats\n", xsize, (long long) ncol, (long long) ne0); return 2; }
        const struct ggml_type_traits_cpu * tc = ggml_get_type_traits_cpu(type);
        const struct ggml_type_traits_cpu * tq = ggml_get_type_traits_cpu(tc->vec_dot_type);
        const size_t qrow = ggml_row_size(tc->vec_dot_type, ne0);
        uint8_t * xq = (uint8_t *) malloc(qrow * (size_t) ncol);
        float * simd = (float *) malloc(sizeof(float) * (size_t) (ncol * nrows));
        float * gen  = (float *) malloc(sizeof(float) * (size_t) (ncol * nrows));
        float * simd2 = (float *) malloc(sizeof(float) * (size_t) (ncol * nrows));
        const int b = ggml_mlwq_type_width(type);
        for (int64_t c = 0; c < ncol; ++c) {
            tq->from_float(x + c*ne0, xq + c*qrow, ne0);
            for (int64_t r = 0; r < nrows; ++r) {
                tc->vec_dot((int) ne0, simd + c*nrows + r, 0, rows + r*row_size, 0, xq + c*qrow, 0, 1);
                ggml_vec_dot_mlwq_q8_1_generic((int) ne0, gen + c*nrows + r, b, rows + r*row_size, xq + c*qrow);
            }
        }
        memcpy(simd2, simd, sizeof(float) * (size_t) (ncol * nrows));
        if (tc->nrows == 2) {
            for (int64_t c = 0; c + 1 < ncol; c += 2) {
                for (int64_t r = 0; r + 1 < nrows; r += 2) {
                    tc->vec_dot((int) ne0, simd2 + c*nrows + r, (size_t) nrows, rows + r*row_size, row_size, xq + c*qrow, qrow, 2);
                }
            }
        }
        // NaN first: an output the gemm's threads leave unwritten shows in the comparison
        float * gemm = (float *) malloc(sizeof(float) * (size_t) (ncol * nrows));
        for (int64_t i = 0; i < ncol * nrows; ++i) {
            gemm[i] = NAN;
        }
        for (int ith = 0; ith < 2; ++ith) {
            if (!ggml_mlwq_gemm(ith, 2, nrows, ncol, ne0 / QK_MLWQ, rows, ne0 / QK_MLWQ, xq, (int64_t) (qrow / ggml_type_size(tc->vec_dot_type)),
                                gemm, nrows, type, tc->vec_dot_type, GGML_TYPE_F32)) {
                memcpy(gemm, simd, sizeof(float) * (size_t) (ncol * nrows));   // no tiled kernel: mul_mat uses vec_dot
                break;
            }
        }
        // out.x8.f32: the repacked rows' product (ggml_mlwq_x8_gemm, 2 threads) where the build has it and
        // the rows pack; otherwise the gemm's
        float * x8 = (float *) malloc(sizeof(float) * (size_t) (ncol * nrows));
        memcpy(x8, gemm, sizeof(float) * (size_t) (ncol * nrows));
        uint8_t * packed = (uint8_t *) malloc(row_size * (size_t) nrows);
        const bool x8_packed = ggml_mlwq_x8_available() && ggml_mlwq_x8_pack(b, ne0, nrows, rows, packed);
        if (x8_packed) {
            for (int64_t i = 0; i < ncol * nrows; ++i) {
                x8[i] = NAN;
            }
            for (int ith = 0; ith < 2; ++ith) {
                ggml_mlwq_x8_gemm(ith, 2, b, nrows, ncol, ne0 / QK_MLWQ, packed, xq,
                                  (int64_t) (qrow / ggml_type_size(tc->vec_dot_type)), x8, nrows);
            }
        }
        char path[4096];
        snprintf(path, sizeof(path), "%s.x8.f32", argv[8]);      write_file(path, x8, sizeof(float) * (size_t) (ncol * nrows));
        snprintf(path, sizeof(path), "%s.gemm.f32", argv[8]);    write_file(path, gemm, sizeof(float) * (size_t) (ncol * nrows));
        snprintf(path, sizeof(path), "%s.simd.f32", argv[8]);    write_file(path, simd, sizeof(float) * (size_t) (ncol * nrows));
        snprintf(path, sizeof(path), "%s.generic.f32", argv[8]); write_file(path, gen, sizeof(float) * (size_t) (ncol * nrows));
        snprintf(path, sizeof(path), "%s.simd2.f32", argv[8]);   write_file(path, simd2, sizeof(float) * (size_t) (ncol * nrows));
        snprintf(path, sizeof(path), "%s.q8_1", argv[8]);        write_file(path, xq, qrow * (size_t) ncol);
        printf("vec_dot_type %s nrows %lld\n", ggml_type_name(tc->vec_dot_type), (long long) tc->nrows);
        printf("x8 %s\n", x8_packed ? "packed" : ggml_mlwq_x8_available() ? "rows" : "unavailable");
        return 0;
    }
    fprintf(stderr, "usage: see the head of mlwq-check.c\n");
    return 2;
}
