// Reference of ggml_patch/FORMAT.md and the checks shared by the MLWQ fuzz targets (see the header).
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "mlwq_fuzz_common.h"

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-mlwq.h"
#include "mlwq-cpu.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QK 64

// ---- process setup ---------------------------------------------------------------------------

// The CPU backend's fp16 table (ggml-cpu.c defines it and fills it in ggml_cpu_init); the kernels
// of mlwq-cpu.c read it through GGML_CPU_FP16_TO_FP32. Only those kernels are linked here.
float ggml_table_f32_f16[1 << 16];

// ggml.c and gguf.cpp refer to these backend functions on paths the targets never take (tensors
// on a backend buffer); linking ggml-backend.cpp would pull in the backend registry.
void ggml_backend_tensor_set(struct ggml_tensor * tensor, const void * data, size_t offset, size_t size) {
    (void) tensor; (void) data; (void) offset; (void) size; abort();
}
void ggml_backend_tensor_get(const struct ggml_tensor * tensor, void * data, size_t offset, size_t size) {
    (void) tensor; (void) data; (void) offset; (void) size; abort();
}
void ggml_backend_tensor_memset(struct ggml_tensor * tensor, uint8_t value, size_t offset, size_t size) {
    (void) tensor; (void) value; (void) offset; (void) size; abort();
}
enum ggml_backend_buffer_usage ggml_backend_buffer_get_usage(ggml_backend_buffer_t buffer) {
    (void) buffer; abort();
}

static FILE * report = NULL;
bool mlwq_fuzz_selftest = false;
static bool verbose = false;
int64_t mlwq_fuzz_max_rows = INT64_MAX;

// ggml's messages are kept (a target may look for one, e.g. gguf's refusal of format version 1's
// type ids), never printed
static char   log_buf[4096];
static size_t log_len = 0;

static void log_keep(enum ggml_log_level level, const char * text, void * user_data) {
    (void) level; (void) user_data;
    const size_t n = strlen(text);
    const size_t room = sizeof(log_buf) - 1 - log_len;
    const size_t k = n < room ? n : room;
    memcpy(log_buf + log_len, text, k);
    log_len += k;
    log_buf[log_len] = 0;
}

const char * mlwq_fuzz_log(void) {
    return log_buf;
}

void mlwq_fuzz_log_clear(void) {
    log_len = 0;
    log_buf[0] = 0;
}

void mlwq_fuzz_init(void) {
    if (report != NULL) {
        return;
    }
    const int fd = dup(2);
    report = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (report == NULL) {
        report = stderr;
    }
    for (int i = 0; i < (1 << 16); ++i) {
        ggml_table_f32_f16[i] = ggml_fp16_to_fp32((ggml_fp16_t) i);
    }
    ggml_log_set(log_keep, NULL);
    const char * st = getenv("MLWQ_FUZZ_SELFTEST");
    mlwq_fuzz_selftest = st != NULL && strcmp(st, "1") == 0;
    const char * vb = getenv("MLWQ_FUZZ_VERBOSE");
    verbose = vb != NULL && strcmp(vb, "1") == 0;
    const char * mr = getenv("MLWQ_FUZZ_MAX_ROWS");
    if (mr != NULL && atoll(mr) > 0) {
        mlwq_fuzz_max_rows = atoll(mr);
    }
    // the scale grid: the reference's values are ggml's, bit for bit (to_float is compared exactly)
    for (int s = 0; s < 256; ++s) {
        const float want = mlwq_ref_scale((uint8_t) s), got = ggml_mlwq_scale((uint8_t) s);
        uint32_t uw, ug;
        memcpy(&uw, &want, 4);
        memcpy(&ug, &got, 4);
        FUZZ_CHECK(uw == ug, "ggml_mlwq_scale(%d) = %a, reference %a", s, (double) got, (double) want);
    }
}

void mlwq_fuzz_verdict(const char * what) {
    if (verbose) {
        fprintf(report, "mlwq-fuzz verdict: %s\n", what);
        fflush(report);
    }
}

void mlwq_fuzz_fail(const char * file, int line, const char * fmt, ...) {
    FILE * f = report ? report : stderr;
    va_list ap;
    va_start(ap, fmt);
    fprintf(f, "\nMLWQ FUZZ CHECK FAILED (%s:%d): ", file, line);
    vfprintf(f, fmt, ap);
    fprintf(f, "\n");
    fflush(f);
    va_end(ap);
    abort();
}

// ---- reference -------------------------------------------------------------------------------

// format version 2's type ids (140..142 were version 1's: not MLWQ types here)
int mlwq_ref_width(int type) {
    return type == 143 ? 2 : type == 144 ? 3 : type == 145 ? 4 : 0;
}

#define REF_HDR 2       // bytes of a block header

size_t mlwq_ref_row_bytes(int64_t K, int b) {
    return (size_t) K * (REF_HDR + 8*(size_t) b);
}

// header j: byte 0 the scale code, byte 1 the zero point (bits 0-4) and the width minus 1 (bits 5-7)
int mlwq_ref_bits(const uint8_t * row, int64_t j) {
    return (row[REF_HDR*j + 1] >> 5) + 1;
}

int mlwq_ref_zero(const uint8_t * row, int64_t j) {
    return row[REF_HDR*j + 1] & 0x1f;
}

// d = 2^(s/8 - 20): 2^((s%8)/8) rounded to float (exp2 in double is within an ulp of double, far
// from a float rounding boundary for these 8 values), times 2^(s/8 - 20) exactly (2^-20 .. 2^11, normal)
float mlwq_ref_scale(uint8_t s) {
    const float m = (float) exp2((double) (s % 8) / 8.0);
    return ldexpf(m, s / 8 - 20);
}

float mlwq_ref_fp16(uint16_t h) {
    const uint32_t sign = (uint32_t) (h >> 15) << 31;
    const uint32_t e    = (h >> 10) & 0x1f;
    const uint32_t m    = h & 0x3ff;
    uint32_t bits;
    if (e == 0) {                     // zero or subnormal: m * 2^-24, exact in float
        const float f = (float) m * 0x1p-24f;
        memcpy(&bits, &f, sizeof(bits));
        bits |= sign;
    } else if (e == 31) {             // inf or NaN
        bits = sign | 0x7f800000u | (m << 13);
    } else {
        bits = sign | ((e - 15 + 127) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

// FORMAT.md: planes greedy 4, 2, 1, low bits first; a plane of width p has 8p bytes and byte i holds
// column i + k*8p at bit offset k*p. So column c of a plane: byte c % 8p, bit offset (c / 8p) * p.
static int ref_code(const uint8_t * codes, int w, int c) {
    int q = 0, shift = 0, rest = w;
    const uint8_t * plane = codes;
    while (rest > 0) {
        const int p = rest >= 4 ? 4 : rest >= 2 ? 2 : 1;
        const int v = (plane[c % (8*p)] >> ((c / (8*p)) * p)) & ((1 << p) - 1);
        q |= v << shift;
        shift += p;
        plane += 8*p;
        rest  -= p;
    }
    return q;
}

int64_t mlwq_ref_decode_row(const uint8_t * row, int64_t ne0, int b, uint8_t * q) {
    const int64_t K         = ne0 / QK;
    const int64_t row_bytes = (int64_t) mlwq_ref_row_bytes(K, b);
    int64_t off = REF_HDR*K, decoded = 0;
    memset(q, 0, (size_t) ne0);
    for (int64_t j = 0; j < K; ++j) {
        const int w = mlwq_ref_bits(row, j);
        if (off + 8*w > row_bytes) {
            break;
        }
        for (int c = 0; c < QK; ++c) {
            q[QK*j + c] = (uint8_t) ref_code(row + off, w, c);
        }
        off += 8*w;
        decoded++;
    }
    return decoded;
}

bool mlwq_ref_validate_rows(int type, const uint8_t * data, size_t nbytes, int64_t ne0, int64_t nrows) {
    const int b = mlwq_ref_width(type);
    if (b == 0 || ne0 <= 0 || ne0 % QK != 0 || nrows < 0) {
        return false;
    }
    const int64_t K         = ne0 / QK;
    const uint64_t row_bytes = (uint64_t) K * (uint64_t) (REF_HDR + 8*b);
    if ((unsigned __int128) row_bytes * (uint64_t) nrows != (unsigned __int128) nbytes) {
        return false;
    }
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t * row = data + (size_t) r * row_bytes;
        int64_t sum = 0;
        for (int64_t j = 0; j < K; ++j) {
            const int zero = mlwq_ref_zero(row, j), w = mlwq_ref_bits(row, j);
            if (zero >= (1 << w)) {
                return false;
            }
            sum += w;
        }
        if (sum > K*b) {
            return false;
        }
        for (uint64_t i = (uint64_t) (REF_HDR*K + 8*sum); i < row_bytes; ++i) {
            if (row[i] != 0) {
                return false;
            }
        }
    }
    return true;
}

bool mlwq_ref_validate_perm(const uint8_t * perm_le, int64_t n) {
    if (n <= 0) {
        return false;
    }
    uint8_t * seen = (uint8_t *) calloc((size_t) n, 1);
    bool ok = seen != NULL;
    for (int64_t j = 0; ok && j < n; ++j) {
        const uint8_t * p = perm_le + 4*j;
        const int64_t v = (int32_t) ((uint32_t) p[0] | ((uint32_t) p[1] << 8) | ((uint32_t) p[2] << 16) | ((uint32_t) p[3] << 24));
        ok = v >= 0 && v < n && !seen[v];
        if (ok) {
            seen[v] = 1;
        }
    }
    free(seen);
    return ok;
}

// ---- checks against ggml ---------------------------------------------------------------------

bool mlwq_fuzz_check_validate(enum ggml_type type, const uint8_t * data, size_t nbytes, int64_t ne0, int64_t nrows) {
    char err[512];
    err[0] = 0;
    const bool got  = ggml_mlwq_validate_rows(type, data, nbytes, ne0, nrows, err, sizeof(err));
    const bool want = mlwq_ref_validate_rows((int) type, data, nbytes, ne0, nrows);
    FUZZ_CHECK(got == want, "ggml_mlwq_validate_rows(type %d, %zu bytes, ne0 %lld, nrows %lld) = %d, reference says %d (%s)",
               (int) type, nbytes, (long long) ne0, (long long) nrows, got, want, err);
    FUZZ_CHECK(got || (err[0] != 0 && strlen(err) < sizeof(err)), "refusal without a message");
    return got;
}

bool mlwq_fuzz_check_perm(const uint8_t * perm, int64_t n) {
    char err[512];
    err[0] = 0;
    const bool got  = ggml_mlwq_validate_perm((const int32_t *) perm, n, err, sizeof(err));
    const bool want = mlwq_ref_validate_perm(perm, n);
    FUZZ_CHECK(got == want, "ggml_mlwq_validate_perm(n %lld) = %d, reference says %d (%s)", (long long) n, got, want, err);
    FUZZ_CHECK(got || err[0] != 0, "refusal without a message");
    return got;
}

static bool same_float(float a, float b) {
    uint32_t ua, ub;
    memcpy(&ua, &a, 4);
    memcpy(&ub, &b, 4);
    return ua == ub || (isnan(a) && isnan(b));
}

typedef void (*vec_dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

// float64 reference of vec_dot over the first `decoded` blocks (codes q from mlwq_ref_decode_row), and
// its tolerance: float rounding in any summation order (the SIMD paths sum 8 or 16 lanes per block in
// float, so lanes may cancel) is at most ~(2K + 16) roundings of 2^-24 of the sum of |products|; a
// wrong code or column moves the result by ~1e-4 of that or more. Returns false (no value specified)
// when an activation scale is inf or NaN (the block scales are always finite).
static bool ref_dot(const uint8_t * row, const uint8_t * q, int64_t decoded, const block_q8_1 * y, double * ref, double * tol) {
    double sum = 0.0, mag = 0.0;
    bool finite = true;
    for (int64_t j = 0; j < decoded; ++j) {
        const double d = mlwq_ref_scale(row[REF_HDR*j]);
        const int zero = mlwq_ref_zero(row, j);
        for (int h = 0; h < 2; ++h) {
            const block_q8_1 * yb = y + 2*j + h;
            const double dy = mlwq_ref_fp16(yb->d);
            int64_t s = 0, sabs = 0;
            for (int i = 0; i < 32; ++i) {
                const int64_t p = ((int64_t) q[QK*j + 32*h + i] - zero) * yb->qs[i];
                s    += p;
                sabs += p < 0 ? -p : p;
            }
            finite = finite && isfinite(d) && isfinite(dy);
            sum += d * dy * (double) s;
            mag += fabs(d * dy) * (double) sabs;
        }
    }
    *ref = sum;
    *tol = (double) (2*decoded + 16) * 0x1p-23 * mag;
    return finite;
}

// got[c*ldc + r] (row r of rows, column c of ys) against the reference, for every row whose zero
// points fit their widths; what names the kernel in the failure message
static void check_products(int b, const char * what, const uint8_t * rows, int64_t nrows, int64_t ne0,
                           const uint8_t * ys, int64_t ncols, const float * got, int64_t ldc) {
    const size_t row_bytes = mlwq_ref_row_bytes(ne0 / QK, b);
    const size_t y_bytes   = (size_t) (2*(ne0 / QK)) * sizeof(block_q8_1);
    uint8_t * q = (uint8_t *) malloc((size_t) ne0);
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t * row = rows + (size_t) r * row_bytes;
        const int64_t decoded = mlwq_ref_decode_row(row, ne0, b, q);
        bool zeros_ok = true;
        for (int64_t j = 0; j < decoded; ++j) {
            zeros_ok = zeros_ok && mlwq_ref_zero(row, j) < (1 << mlwq_ref_bits(row, j));
        }
        for (int64_t c = 0; c < ncols; ++c) {
            const float v = got[c*ldc + r];
            double ref, tol;
            if (ref_dot(row, q, decoded, (const block_q8_1 *) (ys + c*y_bytes), &ref, &tol) && zeros_ok) {
                FUZZ_CHECK(fabs((double) v - ref) <= tol, "mlwq%d %s row %lld column %lld: %.9g, reference %.9g (tolerance %.3g)",
                           b, what, (long long) r, (long long) c, (double) v, ref, tol);
            }
        }
    }
    free(q);
}

void mlwq_fuzz_check_row(enum ggml_type type, const uint8_t * row_in, int64_t ne0, const void * y_q8_1) {
    const int b = mlwq_ref_width((int) type);
    FUZZ_CHECK(b != 0 && ne0 > 0 && ne0 % QK == 0, "bad call");
    const int64_t K         = ne0 / QK;
    const size_t  row_bytes = mlwq_ref_row_bytes(K, b);
    const block_q8_1 * y    = (const block_q8_1 *) y_q8_1;

    // exactly the row: any read past it is a heap-buffer-overflow for ASan
    uint8_t * row  = (uint8_t *) malloc(row_bytes);
    uint8_t * qref = (uint8_t *) malloc((size_t) ne0);
    uint8_t * qgot = (uint8_t *) malloc((size_t) ne0);
    float   * deq  = (float *)   malloc((size_t) ne0 * sizeof(float));
    memcpy(row, row_in, row_bytes);
    const int64_t decoded = mlwq_ref_decode_row(row, ne0, b, qref);

    // codes
    ggml_mlwq_unpack_row(row, qgot, ne0, b);
    for (int64_t i = 0; i < ne0; ++i) {
        FUZZ_CHECK(qgot[i] == qref[i], "mlwq%d unpack_row: column %lld = %d, reference %d (K %lld, %lld blocks decodable)",
                   b, (long long) i, qgot[i], qref[i], (long long) K, (long long) decoded);
    }

    // Values are specified for blocks whose header is valid (codes inside the row,
    // zero <= 2^bits - 1); a zero point out of range is refused by the validator and the kernels
    // need not agree on it (only never read outside the row).
    bool zeros_ok = true;
    for (int64_t j = 0; j < decoded; ++j) {
        zeros_ok = zeros_ok && mlwq_ref_zero(row, j) < (1 << mlwq_ref_bits(row, j));
    }

    // to_float (the type traits' entry, as get_rows calls it)
    const ggml_to_float_t to_float = ggml_get_type_traits(type)->to_float;
    FUZZ_CHECK(to_float != NULL, "mlwq%d has no to_float", b);
    to_float(row, deq, ne0);
    for (int64_t i = 0; i < ne0; ++i) {
        const int64_t j = i / QK;
        if (j >= decoded) {
            FUZZ_CHECK(deq[i] == 0.0f, "mlwq%d to_float: column %lld = %a after the first corrupt header (block %lld), not 0",
                       b, (long long) i, (double) deq[i], (long long) decoded);
        } else if (mlwq_ref_zero(row, j) < (1 << mlwq_ref_bits(row, j))) {
            const float want = mlwq_ref_scale(row[REF_HDR*j]) * (float) ((int) qref[i] - mlwq_ref_zero(row, j));
            FUZZ_CHECK(same_float(deq[i], want), "mlwq%d to_float: column %lld = %a, reference %a",
                       b, (long long) i, (double) deq[i], (double) want);
        }
    }

    // vec_dot with q8_1 activations: float64 reference over the decodable blocks
    double ref, tol;
    const bool checkable = ref_dot(row, qref, decoded, y, &ref, &tol) && zeros_ok;
    static const vec_dot_fn simd[3] = { ggml_vec_dot_mlwq2_q8_1, ggml_vec_dot_mlwq3_q8_1, ggml_vec_dot_mlwq4_q8_1 };
    float got_simd = 0.0f, got_generic = 0.0f;
    simd[b - 2]((int) ne0, &got_simd, 0, row, 0, y, 0, 1);
    ggml_vec_dot_mlwq_q8_1_generic((int) ne0, &got_generic, b, row, y);
    if (checkable) {
        FUZZ_CHECK(fabs((double) got_simd - ref) <= tol, "mlwq%d vec_dot (SIMD build): %.9g, reference %.9g (tolerance %.3g)",
                   b, (double) got_simd, ref, tol);
        FUZZ_CHECK(fabs((double) got_generic - ref) <= tol, "mlwq%d vec_dot (portable): %.9g, reference %.9g (tolerance %.3g)",
                   b, (double) got_generic, ref, tol);
    }

    free(row);
    free(qref);
    free(qgot);
    free(deq);
}

void mlwq_fuzz_check_rows2(enum ggml_type type, const uint8_t * rows_in, int64_t ne0, const void * y_q8_1) {
    const int b = mlwq_ref_width((int) type);
    FUZZ_CHECK(b != 0 && ne0 > 0 && ne0 % QK == 0, "bad call");
    const int64_t K         = ne0 / QK;
    const size_t  row_bytes = mlwq_ref_row_bytes(K, b);
    const size_t  y_bytes   = (size_t) (2*K) * sizeof(block_q8_1);

    // exactly two rows and two columns, as mul_mat passes them (strides bx, by)
    uint8_t * rows = (uint8_t *) malloc(2*row_bytes);
    uint8_t * ys   = (uint8_t *) malloc(2*y_bytes);
    memcpy(rows, rows_in, 2*row_bytes);
    memcpy(ys, y_q8_1, 2*y_bytes);
    static const vec_dot_fn simd[3] = { ggml_vec_dot_mlwq2_q8_1, ggml_vec_dot_mlwq3_q8_1, ggml_vec_dot_mlwq4_q8_1 };
    float got[2*3];     // s[c*bs + r] with bs = 3: the gap must stay untouched
    for (int i = 0; i < 6; ++i) {
        got[i] = -1.0f;
    }
    simd[b - 2]((int) ne0, got, 3, rows, row_bytes, ys, y_bytes, 2);
    FUZZ_CHECK(got[2] == -1.0f && got[5] == -1.0f, "mlwq%d vec_dot (2x2): wrote outside s[c*bs + r]", b);
    check_products(b, "vec_dot (2x2)", rows, 2, ne0, ys, 2, got, 3);
    free(rows);
    free(ys);
}

void mlwq_fuzz_check_gemm(enum ggml_type type, const uint8_t * t, int64_t nrows, int64_t ne0, const void * ys, int64_t ncols) {
    const int b = mlwq_ref_width((int) type);
    FUZZ_CHECK(b != 0 && ne0 > 0 && ne0 % QK == 0 && nrows > 0 && ncols > 0, "bad call");
    const int64_t K         = ne0 / QK;
    float * C = (float *) malloc(sizeof(float) * (size_t) (nrows * ncols));
    for (int nth = 1; nth <= 2; ++nth) {
        for (int64_t i = 0; i < nrows * ncols; ++i) {
            C[i] = NAN;     // an entry no thread writes fails the comparison
        }
        bool done = true;
        for (int ith = 0; ith < nth; ++ith) {
            done = ggml_mlwq_gemm(ith, nth, nrows, ncols, K, t, K, ys, 2*K, C, nrows, type, GGML_TYPE_Q8_1, GGML_TYPE_F32) && done;
        }
        if (!done) {
            break;          // build without the tiled kernel: mul_mat uses vec_dot
        }
        char what[64];
        snprintf(what, sizeof(what), "gemm (%d threads)", nth);
        check_products(b, what, t, nrows, ne0, (const uint8_t *) ys, ncols, C, nrows);
    }
    free(C);
    mlwq_fuzz_check_x8(type, t, nrows, ne0, ys, ncols);
}

// The repacked rows of x86 builds (ggml_mlwq_x8_pack / _gemm): three groups of 8 rows made of the
// given rows (row i = rows[i % nrows]) with row 0's widths, since a group shares them (AVX-512 prompts
// then run a panel of two groups and one of a single group). It packs exactly when row 0's blocks are
// all readable; the packer writes nothing otherwise; packed, the product of 1 column (generation) and
// of all ncols (panels) must give the reference's values on every row whose zero points fit their
// widths, by 1 and 3 threads, and column 0 of the panels generation's bits (a prompt evaluated token
// by token gives the whole prompt's logits).
void mlwq_fuzz_check_x8(enum ggml_type type, const uint8_t * t, int64_t nrows, int64_t ne0, const void * ys, int64_t ncols) {
    if (!ggml_mlwq_x8_available()) {
        return;
    }
    enum { R = 24 };
    const int b = mlwq_ref_width((int) type);
    const int64_t K         = ne0 / QK;
    const size_t  row_bytes = mlwq_ref_row_bytes(K, b);
    uint8_t * g      = (uint8_t *) malloc(R*row_bytes);
    uint8_t * packed = (uint8_t *) malloc(R*row_bytes);
    uint8_t * q      = (uint8_t *) malloc((size_t) ne0);
    float   * C      = (float *) malloc(sizeof(float) * (size_t) (R * ncols));
    for (int i = 0; i < R; ++i) {
        memcpy(g + i*row_bytes, t + (size_t) (i % nrows) * row_bytes, row_bytes);
        for (int64_t j = 0; j < K; ++j) {
            uint8_t * h = g + i*row_bytes + 2*j;
            h[1] = (uint8_t) ((h[1] & GGML_MLWQ_ZERO_MAX) | (t[2*j + 1] & ~GGML_MLWQ_ZERO_MAX));
        }
    }
    memset(packed, 0xA5, R*row_bytes);
    const bool readable = mlwq_ref_decode_row(g, ne0, b, q) == K;
    const bool ok = ggml_mlwq_x8_pack(b, ne0, R, g, packed);
    FUZZ_CHECK(ok == readable, "mlwq%d x8_pack: %d, but row 0's blocks are %sall readable", b, ok, readable ? "" : "not ");
    if (!ok) {
        for (size_t i = 0; i < R*row_bytes; ++i) {
            FUZZ_CHECK(packed[i] == 0xA5, "mlwq%d x8_pack refused the rows but wrote byte %zu", b, i);
        }
    }
    float gen[R];   // generation's sums (1 column, 1 thread): prompts must give column 0 the same bits
    for (int pass = 0; ok && pass < 2; ++pass) {
        const int64_t n = pass == 0 ? 1 : ncols;
        for (int nth = 1; nth <= 3; nth += 2) {   // 3 threads: one group each, and a thread without a panel
            for (int64_t i = 0; i < R * n; ++i) {
                C[i] = NAN;
            }
            for (int ith = 0; ith < nth; ++ith) {
                ggml_mlwq_x8_gemm(ith, nth, b, R, n, K, packed, ys, 2*K, C, R);
            }
            char what[64];
            snprintf(what, sizeof(what), "x8 gemm (%lld columns, %d threads)", (long long) n, nth);
            check_products(b, what, g, R, ne0, (const uint8_t *) ys, n, C, R);
            if (pass == 0 && nth == 1) {
                memcpy(gen, C, sizeof(gen));
            }
            for (int r = 0; pass == 1 && r < R; ++r) {
                FUZZ_CHECK(memcmp(&C[r], &gen[r], sizeof(float)) == 0,
                           "mlwq%d %s: row %d of column 0 is %a, generation gave %a", b, what, r, C[r], gen[r]);
            }
        }
    }
    free(g);
    free(packed);
    free(q);
    free(C);
}
