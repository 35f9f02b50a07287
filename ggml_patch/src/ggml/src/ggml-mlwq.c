// MLWQ types, core part (ggml-base): to_float, row unpacking and validation.
// Layout: ggml/include/ggml-mlwq.h and mlwq's ggml_patch/FORMAT.md.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-mlwq.h"
#include "ggml-impl.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ggml_mlwq_decode_block(const uint8_t * GGML_RESTRICT c, int bits, uint8_t * GGML_RESTRICT q) {
    int planes[3];
    const int np = ggml_mlwq_planes(bits, planes);
    memset(q, 0, QK_MLWQ);
    int shift = 0;
    for (int ip = 0; ip < np; ++ip) {
        const int p      = planes[ip];
        const int nbytes = 8*p;      // bytes of this plane
        const int per    = 8/p;      // columns per byte: column i + kk*nbytes at bit kk*p
        const int mask   = (1 << p) - 1;
        for (int i = 0; i < nbytes; ++i) {
            const int byte = c[i];
            for (int kk = 0; kk < per; ++kk) {
                q[i + kk*nbytes] |= (uint8_t) (((byte >> (kk*p)) & mask) << shift);
            }
        }
        c     += nbytes;
        shift += p;
    }
}

// codes of one row; from the first corrupt header on (bits outside 1..8 or codes past the row
// end) the blocks read as 0: never touches bytes past the row
static void mlwq_row(const uint8_t * GGML_RESTRICT x, int64_t k, int b, uint8_t * GGML_RESTRICT q) {
    const int64_t K         = k / QK_MLWQ;
    const size_t  row_bytes = ggml_mlwq_row_bytes(K, b);
    size_t off = (size_t) K * GGML_MLWQ_HEADER_SIZE;
    bool   ok  = true;
    for (int64_t j = 0; j < K; ++j) {
        const uint8_t * h    = x + GGML_MLWQ_HEADER_SIZE*j;
        const int       bits = ggml_mlwq_hdr_bits(h);
        if (!ok || !ggml_mlwq_block_readable(bits, off, row_bytes)) {
            ok = false;
            memset(q + QK_MLWQ*j, 0, QK_MLWQ);
            continue;
        }
        ggml_mlwq_decode_block(x + off, bits, q + QK_MLWQ*j);
        off += 8*(size_t) bits;
    }
}

void ggml_mlwq_unpack_row(const void * GGML_RESTRICT x, uint8_t * GGML_RESTRICT q, int64_t k, int b) {
    mlwq_row((const uint8_t *) x, k, b, q);
}

static void mlwq_dequantize_row(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k, int b) {
    assert(k % QK_MLWQ == 0);
    const int64_t K = k / QK_MLWQ;
    uint8_t q[QK_MLWQ];
    size_t off = (size_t) K * GGML_MLWQ_HEADER_SIZE;
    const size_t row_bytes = ggml_mlwq_row_bytes(K, b);
    const uint8_t * xb = (const uint8_t *) x;
    bool ok = true;
    for (int64_t j = 0; j < K; ++j) {
        const uint8_t * h    = xb + GGML_MLWQ_HEADER_SIZE*j;
        const int       bits = ggml_mlwq_hdr_bits(h);
        float * yj = y + QK_MLWQ*j;
        if (!ok || !ggml_mlwq_block_readable(bits, off, row_bytes)) {
            ok = false;
            memset(yj, 0, QK_MLWQ*sizeof(float));
            continue;
        }
        ggml_mlwq_decode_block(xb + off, bits, q);
        const float d    = ggml_mlwq_hdr_scale(h);
        const int   zero = ggml_mlwq_hdr_zero(h);
        for (int i = 0; i < QK_MLWQ; ++i) {
            yj[i] = d * (float) ((int) q[i] - zero);
        }
        off += 8*(size_t) bits;
    }
}

void dequantize_row_mlwq2(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) { mlwq_dequantize_row(x, y, k, 2); }
void dequantize_row_mlwq3(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) { mlwq_dequantize_row(x, y, k, 3); }
void dequantize_row_mlwq4(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) { mlwq_dequantize_row(x, y, k, 4); }

// nbytes holds nrows rows of ne0 columns, each block a header of `header` bytes and 8*b bytes of codes
static bool mlwq_check_shape(int64_t ne0, int64_t nrows, size_t nbytes, size_t header, int b, char * err, size_t err_size) {
    if (ne0 <= 0 || ne0 % QK_MLWQ != 0 || nrows < 0) {
        snprintf(err, err_size, "ne0 = %" PRId64 " is not a positive multiple of %d", ne0, QK_MLWQ);
        return false;
    }
    const size_t row_bytes = (size_t) (ne0 / QK_MLWQ) * (header + 8*(size_t) b);
    if (nbytes / row_bytes != (size_t) nrows || nbytes % row_bytes != 0) {
        snprintf(err, err_size, "%zu bytes is not %" PRId64 " rows of %zu bytes", nbytes, nrows, row_bytes);
        return false;
    }
    return true;
}

bool ggml_mlwq_validate_rows(enum ggml_type type, const void * data, size_t nbytes,
                             int64_t ne0, int64_t nrows, char * err, size_t err_size) {
    const int b = ggml_mlwq_type_width(type);
    if (b == 0) {
        snprintf(err, err_size, "type %d is not an MLWQ type", (int) type);
        return false;
    }
    if (!mlwq_check_shape(ne0, nrows, nbytes, GGML_MLWQ_HEADER_SIZE, b, err, err_size)) {
        return false;
    }
    const int64_t K         = ne0 / QK_MLWQ;
    const size_t  row_bytes = ggml_mlwq_row_bytes(K, b);
    const uint8_t * x = (const uint8_t *) data;
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t * row = x + (size_t) r * row_bytes;
        int64_t sum = 0;
        for (int64_t j = 0; j < K; ++j) {
            const uint8_t * h = row + GGML_MLWQ_HEADER_SIZE*j;
            const int zero = ggml_mlwq_hdr_zero(h);
            const int bits = ggml_mlwq_hdr_bits(h);
            if (zero > (1 << bits) - 1) {
                snprintf(err, err_size, "row %" PRId64 " block %" PRId64 ": zero = %d > 2^bits - 1 = %d (bits = %d)",
                         r, j, zero, (1 << bits) - 1, bits);
                return false;
            }
            sum += bits;
        }
        if (sum > K*b) {
            snprintf(err, err_size, "row %" PRId64 ": sum of block bits = %" PRId64 " exceeds K*b = %" PRId64
                     " (K = %" PRId64 ", b = %d): codes would not fit the row", r, sum, K*b, K, b);
            return false;
        }
        for (size_t i = (size_t) K*GGML_MLWQ_HEADER_SIZE + 8*(size_t) sum; i < row_bytes; ++i) {
            if (row[i] != 0) {
                snprintf(err, err_size, "row %" PRId64 ": non-zero byte %zu in the padding after the codes", r, i);
                return false;
            }
        }
    }
    return true;
}

bool ggml_mlwq_validate_perm(const int32_t * perm, int64_t n, char * err, size_t err_size) {
    if (n <= 0) {
        snprintf(err, err_size, "empty permutation");
        return false;
    }
    uint8_t * seen = (uint8_t *) calloc((size_t) n, 1);
    if (!seen) {
        snprintf(err, err_size, "out of memory");
        return false;
    }
    bool ok = true;
    for (int64_t j = 0; j < n; ++j) {
        int32_t v;
        memcpy(&v, perm + j, sizeof(v));
        if (v < 0 || v >= n) {
            snprintf(err, err_size, "entry %" PRId64 " = %d is outside 0..%" PRId64, j, v, n - 1);
            ok = false;
            break;
        }
        if (seen[v]) {
            snprintf(err, err_size, "entry %" PRId64 " = %d repeats an earlier entry: not a permutation", j, v);
            ok = false;
            break;
        }
        seen[v] = 1;
    }
    free(seen);
    return ok;
}

bool ggml_mlwq_expand_v3(enum ggml_type type, const void * data, size_t nbytes, int64_t ne0, int64_t nrows,
                         const uint8_t * row_scale, const uint8_t * bits, void * out, char * err, size_t err_size) {
    const enum ggml_type rt = ggml_mlwq_v3_runtime_type(type);
    const int b = ggml_mlwq_type_width(rt);
    if (b == 0) {
        snprintf(err, err_size, "type %d is not an MLWQ format 3 type", (int) type);
        return false;
    }
    if (!mlwq_check_shape(ne0, nrows, nbytes, GGML_MLWQ_V3_HEADER_SIZE, b, err, err_size)) {
        return false;
    }
    const int64_t K      = ne0 / QK_MLWQ;
    const size_t  in_row = (size_t) K * (GGML_MLWQ_V3_HEADER_SIZE + 8*(size_t) b);
    int64_t sum = 0;
    for (int64_t j = 0; j < K; ++j) {
        if (bits[j] < GGML_MLWQ_MIN_BITS || bits[j] > GGML_MLWQ_MAX_BITS) {
            snprintf(err, err_size, "block %" PRId64 ": width %d outside %d..%d", j, bits[j], GGML_MLWQ_MIN_BITS, GGML_MLWQ_MAX_BITS);
            return false;
        }
        sum += bits[j];
    }
    if (sum > K*b) {
        snprintf(err, err_size, "sum of block widths = %" PRId64 " exceeds K*b = %" PRId64 " (K = %" PRId64 ", b = %d): "
                 "codes would not fit the row", sum, K*b, K, b);
        return false;
    }
    const size_t    out_row = ggml_mlwq_row_bytes(K, b);
    const size_t    used    = (size_t) K*GGML_MLWQ_V3_HEADER_SIZE + 8*(size_t) sum;
    const uint8_t * x       = (const uint8_t *) data;
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t * row = x + (size_t) r * in_row;
        uint8_t       * dst = out ? (uint8_t *) out + (size_t) r * out_row : NULL;
        for (int64_t j = 0; j < K; ++j) {
            const int c    = row[j] & 15;
            const int zero = row[j] >> 4;
            const int s    = (int) row_scale[r] - GGML_MLWQ_V3_SCALE_STEP*c;
            if (s < 0) {
                snprintf(err, err_size, "row %" PRId64 " block %" PRId64 ": scale code %d - %d*%d < 0",
                         r, j, (int) row_scale[r], GGML_MLWQ_V3_SCALE_STEP, c);
                return false;
            }
            if (zero > (1 << bits[j]) - 1) {
                snprintf(err, err_size, "row %" PRId64 " block %" PRId64 ": zero = %d > 2^bits - 1 = %d (bits = %d)",
                         r, j, zero, (1 << bits[j]) - 1, bits[j]);
                return false;
            }
            if (dst) {
                dst[GGML_MLWQ_HEADER_SIZE*j]     = (uint8_t) s;
                dst[GGML_MLWQ_HEADER_SIZE*j + 1] = (uint8_t) (zero | (bits[j] - 1) << 5);
            }
        }
        for (size_t i = used; i < in_row; ++i) {
            if (row[i] != 0) {
                snprintf(err, err_size, "row %" PRId64 ": non-zero byte %zu in the padding after the codes", r, i);
                return false;
            }
        }
        if (dst) {
            memcpy(dst + (size_t) K*GGML_MLWQ_HEADER_SIZE, row + K, in_row - (size_t) K);
        }
    }
    return true;
}

bool ggml_mlwq_expand_perm16(const uint16_t * perm, int64_t n, int32_t * out, char * err, size_t err_size) {
    if (n <= 0) {
        snprintf(err, err_size, "empty permutation");
        return false;
    }
    int32_t * wide = out ? out : (int32_t *) malloc(sizeof(int32_t) * (size_t) n);
    if (!wide) {
        snprintf(err, err_size, "out of memory");
        return false;
    }
    for (int64_t j = 0; j < n; ++j) {
        uint16_t v;
        memcpy(&v, perm + j, sizeof(v));
        wide[j] = v;
    }
    const bool ok = ggml_mlwq_validate_perm(wide, n, err, err_size);
    if (!out) {
        free(wide);
    }
    return ok;
}

struct ggml_tensor * ggml_mlwq_mul_mat(struct ggml_context * ctx, struct ggml_tensor * a, struct ggml_tensor * b,
                                       struct ggml_tensor * perm) {
    struct ggml_tensor * result = ggml_mul_mat(ctx, a, b);
    if (perm != NULL) {
        GGML_ASSERT(ggml_mlwq_is_type(a->type) && "a column permutation goes with an MLWQ weight");
        GGML_ASSERT(perm->type == GGML_TYPE_I32 && ggml_is_contiguous(perm) && perm->ne[0] == a->ne[0] &&
                    ggml_nelements(perm) == perm->ne[0]);
        GGML_ASSERT(b->type == GGML_TYPE_F32 && "the permuted activations are gathered from F32");
        result->src[GGML_MLWQ_PERM_SRC] = perm;
    }
    return result;
}
