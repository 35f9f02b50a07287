// mlwq-exact: the CPU kernels of the MLWQ types (whatever SIMD path the build took: NEON, NEON +
// dotprod, AVX2, AVX-512) give exactly the integer sums of the portable C loop, on every block.
//
//   mlwq-exact rows  TYPE NE0 NROWS rows.bin NCOL SEED   real rows (e.g. a tensor of an exported GGUF),
//                                                        NCOL q8_1 activation columns drawn from SEED
//   mlwq-exact seeds PATH...                             fuzz_mlwq_rows inputs (files or directories;
//                                                        rows mode only, the layout of fuzz_mlwq_rows.c)
//   mlwq-exact path                                      prints the kernel this build runs
//
// How exactness is seen through float outputs. The rows are copied with every block's scale code set
// to 160 - 8*(r%4), i.e. d = 2^-(r%4) (row r; format version 2 has no scale 0, every code is a power
// 2^(s/8 - 20) > 0). For every block j, the activations of column c get scales 2^-(c%3) (q8_1 block
// 2j) and 2^(1-c%3) (block 2j+1), and every other q8_1 block of the column scale 0 (the kernels use
// only q8_1's d, never its rounded sum s). Every kernel then returns 2^-(r%4) * (2^-(c%3) * S0 +
// 2^(1-c%3) * S1), with S0, S1 the int32 sums of (q - zero)*qy over block j's two halves: |S| < 2^21,
// so every step of the float arithmetic is exact, and the output equals that value exactly (compared
// with ==) or an int32 sum differs. Blocks after a row's first corrupt header (codes past the row end)
// must give 0; blocks with a zero point out of range (refused by the validator, FORMAT.md) are not
// compared. The expected value is computed here from the codes of ggml_mlwq_unpack_row in int64.
//
// Kernels checked on every block: vec_dot 1 row x 1 column (the type traits' entry), vec_dot 2 rows x
// 2 columns (nrows = 2, as ggml's mul_mat calls it), ggml_mlwq_gemm with 1 and 2 threads (the tiled
// product of llamafile_sgemm; the build's vec_dot where it has none), and the portable loop
// (ggml_vec_dot_mlwq_q8_1_generic). Then with the real scales: every kernel within the fuzz
// harness's float tolerance of a float64 reference.
//
// MLWQ_EXACT_SELFTEST=1 in the environment shifts every expected sum by one: the run must then fail.
// Output: "mlwq-exact: kernel=K rows=R blocks=B sums=S mismatches=0" (S: block x column int32 sums
// compared, per kernel); exit 0 when everything agrees, 1 on any mismatch (the first ones are
// printed), 2 on usage or I/O errors.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

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

typedef void (*vec_dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

static long long n_rows = 0, n_blocks = 0, n_sums = 0, n_mismatch = 0, n_inputs = 0;
// MLWQ_EXACT_SELFTEST=1: every expected sum is off by one (tests that a mismatch is reported)
static bool selftest = false;

static void mismatch(const char * what, const char * kernel, int b, long long r, long long c, long long j, double got, double want) {
    if (n_mismatch < 20) {
        printf("MISMATCH %s: %s mlwq%d row %lld column %lld block %lld: got %.17g, want %.17g\n",
               what, kernel, b, r, c, j, got, want);
    }
    n_mismatch++;
}

// xorshift64*: activations the same on every machine
static uint64_t rng_state;
static uint32_t rng_next(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t) ((rng_state * 0x2545F4914F6CDD1DULL) >> 32);
}

// All kernels on rows x ys (ncol columns of 2K q8_1 blocks each), outputs out[kernel][c*nrows + r].
enum { K_1X1, K_2X2, K_GEMM1, K_GEMM2, K_GENERIC, N_KERNELS };
static const char * KERNEL_NAMES[N_KERNELS] = { "vec_dot 1x1", "vec_dot 2x2", "gemm 1 thread", "gemm 2 threads", "portable loop" };

static void run_kernels(enum ggml_type type, const uint8_t * rows, int64_t nrows, int64_t ne0, const uint8_t * ys,
                        int64_t ncol, float * out[N_KERNELS]) {
    const struct ggml_type_traits_cpu * tc = ggml_get_type_traits_cpu(type);
    const int b = ggml_mlwq_type_width(type);
    const size_t row_size = ggml_row_size(type, ne0);
    const size_t qrow = ggml_row_size(GGML_TYPE_Q8_1, ne0);
    for (int k = 0; k < N_KERNELS; ++k) {
        for (int64_t i = 0; i < nrows*ncol; ++i) {
            out[k][i] = NAN;
        }
    }
    for (int64_t c = 0; c < ncol; ++c) {
        for (int64_t r = 0; r < nrows; ++r) {
            tc->vec_dot((int) ne0, out[K_1X1] + c*nrows + r, 0, rows + r*row_size, 0, ys + c*qrow, 0, 1);
            ggml_vec_dot_mlwq_q8_1_generic((int) ne0, out[K_GENERIC] + c*nrows + r, b, rows + r*row_size, ys + c*qrow);
        }
    }
    // 2x2 calls where rows and columns pair up, single calls for an odd last row or column
    memcpy(out[K_2X2], out[K_1X1], sizeof(float) * (size_t) (nrows*ncol));
    if (tc->nrows == 2) {
        for (int64_t c = 0; c + 1 < ncol; c += 2) {
            for (int64_t r = 0; r + 1 < nrows; r += 2) {
                tc->vec_dot((int) ne0, out[K_2X2] + c*nrows + r, (size_t) nrows, rows + r*row_size, row_size, ys + c*qrow, qrow, 2);
            }
        }
    }
    for (int nth = 1; nth <= 2; ++nth) {
        float * o = out[nth == 1 ? K_GEMM1 : K_GEMM2];
        for (int ith = 0; ith < nth; ++ith) {
            if (!ggml_mlwq_gemm(ith, nth, nrows, ncol, ne0 / QK_MLWQ, rows, ne0 / QK_MLWQ, ys,
                                (int64_t) (qrow / sizeof(block_q8_1)), o, nrows, type, GGML_TYPE_Q8_1, GGML_TYPE_F32)) {
                memcpy(o, out[K_1X1], sizeof(float) * (size_t) (nrows*ncol));   // no tiled kernel: mul_mat uses vec_dot
                break;
            }
        }
    }
}

// The whole check of one set of rows x columns (see the head of the file).
static void check(const char * what, enum ggml_type type, const uint8_t * rows_in, int64_t nrows, int64_t ne0,
                  const uint8_t * ys_in, int64_t ncol) {
    const int b = ggml_mlwq_type_width(type);
    const int64_t K = ne0 / QK_MLWQ;
    const size_t row_size = ggml_row_size(type, ne0);
    const size_t qrow = ggml_row_size(GGML_TYPE_Q8_1, ne0);
    n_inputs++;
    n_rows += nrows;
    n_blocks += nrows * K;
    if (nrows == 0 || ncol == 0) {
        return;
    }

    // codes (portable decoder), blocks before each row's first corrupt header, zero points in range
    uint8_t * q = malloc((size_t) (nrows*ne0));
    int64_t * nb = malloc(sizeof(int64_t) * (size_t) nrows);
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t * x = rows_in + r*row_size;
        ggml_mlwq_unpack_row(x, q + r*ne0, ne0, b);
        size_t off = (size_t) K * GGML_MLWQ_HEADER_SIZE;
        nb[r] = K;
        for (int64_t j = 0; j < K; ++j) {
            const int bits = ggml_mlwq_hdr_bits(x + GGML_MLWQ_HEADER_SIZE*j);
            if (!ggml_mlwq_block_readable(bits, off, row_size)) {
                nb[r] = j;
                break;
            }
            off += 8*(size_t) bits;
        }
    }
    // int64 sums of (q - zero)*qy per row, column, block, half
    int64_t * S = malloc(sizeof(int64_t) * (size_t) (nrows*ncol*K*2));
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t * x = rows_in + r*row_size;
        for (int64_t c = 0; c < ncol; ++c) {
            const block_q8_1 * yb = (const block_q8_1 *) (ys_in + c*qrow);
            for (int64_t j = 0; j < K; ++j) {
                for (int h = 0; h < 2; ++h) {
                    int64_t s = 0;
                    for (int i = 0; i < 32; ++i) {
                        s += ((int64_t) q[r*ne0 + 64*j + 32*h + i] - ggml_mlwq_hdr_zero(x + GGML_MLWQ_HEADER_SIZE*j)) * yb[2*j + h].qs[i];
                    }
                    S[((r*ncol + c)*K + j)*2 + h] = j < nb[r] ? s : 0;
                }
            }
        }
    }

    uint8_t * rows = malloc(row_size * (size_t) nrows);
    uint8_t * ys   = malloc(qrow * (size_t) ncol);
    float * out[N_KERNELS];
    for (int k = 0; k < N_KERNELS; ++k) {
        out[k] = malloc(sizeof(float) * (size_t) (nrows*ncol));
    }

    // exact sums, block by block: row scales 2^-(r%4) on every block, activations only on block j
    memcpy(rows, rows_in, row_size * (size_t) nrows);
    for (int64_t r = 0; r < nrows; ++r) {
        uint8_t * x = rows + r*row_size;
        for (int64_t jj = 0; jj < K; ++jj) {
            x[GGML_MLWQ_HEADER_SIZE*jj] = (uint8_t) (8*(-GGML_MLWQ_SCALE_EXP0) - 8*(r % 4));
        }
    }
    memcpy(ys, ys_in, qrow * (size_t) ncol);
    for (int64_t j = 0; j < K; ++j) {
        for (int64_t c = 0; c < ncol; ++c) {
            block_q8_1 * yb = (block_q8_1 *) (ys + c*qrow);
            for (int64_t i = 0; i < 2*K; ++i) {
                yb[i].d = ggml_fp32_to_fp16(i / 2 == j ? ldexpf(1.0f, (int) (i % 2) - (int) (c % 3)) : 0.0f);
            }
        }
        run_kernels(type, rows, nrows, ne0, ys, ncol, out);
        for (int64_t r = 0; r < nrows; ++r) {
            const uint8_t * h = rows_in + r*row_size + GGML_MLWQ_HEADER_SIZE*j;
            if (j < nb[r] && ggml_mlwq_hdr_zero(h) > (1 << ggml_mlwq_hdr_bits(h)) - 1) {
                continue;   // zero point out of range: no value specified
            }
            for (int64_t c = 0; c < ncol; ++c) {
                const int64_t * s = S + ((r*ncol + c)*K + j)*2;
                const double want = ldexp((double) s[0], -(int) (r % 4) - (int) (c % 3)) +
                                    ldexp((double) s[1], 1 - (int) (r % 4) - (int) (c % 3)) + (selftest ? 1.0 : 0.0);
                for (int k = 0; k < N_KERNELS; ++k) {
                    const float got = out[k][c*nrows + r];
                    n_sums++;
                    if (!((double) got == want)) {
                        mismatch(what, KERNEL_NAMES[k], b, r, c, j, got, want);
                    }
                }
            }
        }
    }

    // the real scales: within float rounding of a float64 reference (bound of ggml_patch/fuzz)
    run_kernels(type, rows_in, nrows, ne0, ys_in, ncol, out);
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t * x = rows_in + r*row_size;
        bool specified = true;
        for (int64_t j = 0; j < nb[r]; ++j) {
            const uint8_t * h = x + GGML_MLWQ_HEADER_SIZE*j;
            specified = specified && ggml_mlwq_hdr_zero(h) <= (1 << ggml_mlwq_hdr_bits(h)) - 1;
        }
        if (!specified) {
            continue;
        }
        for (int64_t c = 0; c < ncol; ++c) {
            const block_q8_1 * yb = (const block_q8_1 *) (ys_in + c*qrow);
            double ref = 0.0, mag = 0.0;
            bool finite = true;
            for (int64_t j = 0; j < nb[r]; ++j) {
                const double d    = ggml_mlwq_hdr_scale(x + GGML_MLWQ_HEADER_SIZE*j);
                const int    zero = ggml_mlwq_hdr_zero(x + GGML_MLWQ_HEADER_SIZE*j);
                for (int h = 0; h < 2; ++h) {
                    const double dy = ggml_fp16_to_fp32(yb[2*j + h].d);
                    int64_t sabs = 0;
                    for (int i = 0; i < 32; ++i) {
                        const int64_t p = ((int64_t) q[r*ne0 + 64*j + 32*h + i] - zero) * yb[2*j + h].qs[i];
                        sabs += p < 0 ? -p : p;
                    }
                    finite = finite && isfinite(dy);
                    ref += d * dy * (double) S[((r*ncol + c)*K + j)*2 + h];
                    mag += fabs(d * dy) * (double) sabs;
                }
            }
            if (!finite) {
                continue;
            }
            const double tol = (double) (2*nb[r] + 16) * 0x1p-23 * mag;
            for (int k = 0; k < N_KERNELS; ++k) {
                const float got = out[k][c*nrows + r];
                if (!(fabs((double) got - ref) <= tol)) {
                    mismatch(what, KERNEL_NAMES[k], b, r, c, -1, got, ref);
                }
            }
        }
    }

    for (int k = 0; k < N_KERNELS; ++k) {
        free(out[k]);
    }
    free(rows); free(ys); free(S); free(nb); free(q);
}

// activations: int8 in -127..127 (what ggml's q8_1 quantizer writes; extremes included), fp16 scales
static void random_q8_1(block_q8_1 * yb, int64_t nblocks) {
    for (int64_t i = 0; i < nblocks; ++i) {
        yb[i].d = ggml_fp32_to_fp16(0.001f + (float) (rng_next() % 1000) * 1e-5f);
        int s = 0;
        for (int k = 0; k < QK8_1; ++k) {
            const uint32_t u = rng_next();
            yb[i].qs[k] = (int8_t) ((u & 7) == 0 ? ((u >> 3) & 1 ? 127 : -127) : (int) ((u >> 4) % 255) - 127);
            s += yb[i].qs[k];
        }
        yb[i].s = ggml_fp32_to_fp16(ggml_fp16_to_fp32(yb[i].d) * (float) s);
    }
}

// one fuzz_mlwq_rows input in rows mode (fuzz_mlwq_rows.c: rows_mode): byte 1 type, byte 2 K - 1
// (mod 32), byte 3 nrows (mod 5), the rows, then 2K q8_1 blocks (zero-filled when short, -128 read as
// -127); the harness's 5 columns: the activations rotated by c blocks
static void seed_file(const char * path) {
    size_t size;
    uint8_t * data = read_file(path, &size);
    if (size < 1 || data[0] % 4 != 0) {
        free(data);
        return;         // shapes, permutations, foreign types: no kernel values
    }
    uint8_t hdr[4] = {0, 0, 0, 0};
    memcpy(hdr, data, size < 4 ? size : 4);
    const enum ggml_type type = (enum ggml_type) (GGML_TYPE_MLWQ2 + hdr[1] % 3);
    const int64_t K = 1 + hdr[2] % 32, ne0 = K * QK_MLWQ, nrows = hdr[3] % 5;
    const size_t row_size = ggml_row_size(type, ne0), nbytes = (size_t) nrows * row_size;
    const uint8_t * p = data + (size < 4 ? size : 4);
    size_t left = size < 4 ? 0 : size - 4;
    uint8_t * rows = calloc(nbytes ? nbytes : 1, 1);
    memcpy(rows, p, left < nbytes ? left : nbytes);
    p += left < nbytes ? left : nbytes;
    left -= left < nbytes ? left : nbytes;
    const size_t y_bytes = (size_t) (2*K) * sizeof(block_q8_1);
    uint8_t * y = calloc(y_bytes, 1);
    memcpy(y, p, left < y_bytes ? left : y_bytes);
    for (int64_t i = 0; i < 2*K; ++i) {
        block_q8_1 * yb = (block_q8_1 *) (y + i*sizeof(block_q8_1));
        for (int k = 0; k < QK8_1; ++k) {
            yb->qs[k] = yb->qs[k] == -128 ? -127 : yb->qs[k];
        }
    }
    const int64_t ncol = 5;
    uint8_t * y5 = malloc(ncol * y_bytes);
    for (int64_t c = 0; c < ncol; ++c) {
        for (int64_t i = 0; i < 2*K; ++i) {
            memcpy(y5 + c*y_bytes + i*sizeof(block_q8_1), y + ((i + c) % (2*K))*sizeof(block_q8_1), sizeof(block_q8_1));
        }
    }
    check(path, type, rows, nrows, ne0, y5, ncol);
    free(y5); free(y); free(rows); free(data);
}

int main(int argc, char ** argv) {
    ggml_cpu_init();
    selftest = getenv("MLWQ_EXACT_SELFTEST") != NULL && strcmp(getenv("MLWQ_EXACT_SELFTEST"), "1") == 0;
    if (argc == 2 && strcmp(argv[1], "path") == 0) {
        printf("%s\n", ggml_mlwq_cpu_kernel());
        return 0;
    }
    if (argc == 8 && strcmp(argv[1], "rows") == 0) {
        const enum ggml_type type = parse_type(argv[2]);
        const int64_t ne0 = atoll(argv[3]), nrows = atoll(argv[4]), ncol = atoll(argv[6]);
        size_t size;
        uint8_t * rows = read_file(argv[5], &size);
        if (ne0 <= 0 || ne0 % QK_MLWQ != 0 || nrows < 0 || ncol < 1 || size != ggml_row_size(type, ne0) * (size_t) nrows) {
            fprintf(stderr, "%zu bytes is not %lld rows of %lld columns of %s\n", size, (long long) nrows, (long long) ne0, argv[2]);
            return 2;
        }
        rng_state = 0x9E3779B97F4A7C15ULL ^ (uint64_t) atoll(argv[7]);
        const size_t qrow = ggml_row_size(GGML_TYPE_Q8_1, ne0);
        uint8_t * ys = malloc(qrow * (size_t) ncol);
        random_q8_1((block_q8_1 *) ys, (ne0 / QK8_1) * ncol);
        check(argv[5], type, rows, nrows, ne0, ys, ncol);
        free(ys); free(rows);
    } else if (argc >= 3 && strcmp(argv[1], "seeds") == 0) {
        for (int i = 2; i < argc; ++i) {
            for_each_file(argv[i], seed_file);
        }
    } else {
        fprintf(stderr, "usage: see the head of mlwq-exact.c\n");
        return 2;
    }
    printf("mlwq-exact: kernel=%s inputs=%lld rows=%lld blocks=%lld sums=%lld mismatches=%lld\n",
           ggml_mlwq_cpu_kernel(), n_inputs, n_rows, n_blocks, n_sums, n_mismatch);
    return n_mismatch == 0 ? 0 : 1;
}
