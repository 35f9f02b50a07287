// MLWQ types, CPU part: dot product of an MLWQ row with a q8_1 row (the activations).
//
//   per 64-column block j (two q8_1 blocks of 32, activation scale dy, int8 qy):
//   sum_i d_j*(q_i - z_j) * dy*qy_i = d_j * dy * (sum_i q_i*qy_i - z_j * sum_i qy_i)
//
// The integer sums are exact (no use of q8_1's rounded fp16 s), so the kernel differs from the
// fp32 reference only by the order of float additions. One source for every architecture: an
// AVX2 path when the compiler targets AVX2, the portable C loop otherwise (so every arch links
// without arch-fallback.h entries). Both stop at the first corrupt header of a row (bits outside
// 1..8, codes past the row end): they never read past the row's K*(4+8b) bytes.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "ggml-mlwq.h"
#include "mlwq-cpu.h"

#include <assert.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

static inline bool mlwq_block_ok(int bits, size_t off, size_t row_bytes) {
    return bits >= GGML_MLWQ_MIN_BITS && bits <= GGML_MLWQ_MAX_BITS && off + 8*(size_t) bits <= row_bytes;
}

static void mlwq_decode_block_scalar(const uint8_t * GGML_RESTRICT c, int bits, uint8_t * GGML_RESTRICT q) {
    int planes[3];
    const int np = ggml_mlwq_planes(bits, planes);
    memset(q, 0, QK_MLWQ);
    int shift = 0;
    for (int ip = 0; ip < np; ++ip) {
        const int p = planes[ip], nbytes = 8*p, per = 8/p, mask = (1 << p) - 1;
        for (int i = 0; i < nbytes; ++i) {
            for (int kk = 0; kk < per; ++kk) {
                q[i + kk*nbytes] |= (uint8_t) (((c[i] >> (kk*p)) & mask) << shift);
            }
        }
        c += nbytes;
        shift += p;
    }
}

static float mlwq_vec_dot_scalar(int n, const uint8_t * GGML_RESTRICT x, const block_q8_1 * GGML_RESTRICT y, int b) {
    const int    K         = n / QK_MLWQ;
    const size_t row_bytes = (size_t) K * (GGML_MLWQ_HEADER_SIZE + 8*(size_t) b);
    size_t off = (size_t) K * GGML_MLWQ_HEADER_SIZE;
    uint8_t q[QK_MLWQ];
    float sumf = 0.0f;
    for (int j = 0; j < K; ++j) {
        const uint8_t * h = x + 4*j;
        const int bits = h[3];
        if (!mlwq_block_ok(bits, off, row_bytes)) {
            break;
        }
        mlwq_decode_block_scalar(x + off, bits, q);
        off += 8*(size_t) bits;
        uint16_t d16;
        memcpy(&d16, h, sizeof(d16));
        const float d    = GGML_CPU_FP16_TO_FP32(d16);
        const int   zero = h[2];
        float sumb = 0.0f;
        for (int half = 0; half < 2; ++half) {
            const block_q8_1 * yb = y + 2*j + half;
            int sqy = 0, sy = 0;
            for (int i = 0; i < QK8_1; ++i) {
                sqy += (int) q[half*QK8_1 + i] * yb->qs[i];
                sy  += yb->qs[i];
            }
            sumb += GGML_CPU_FP16_TO_FP32(yb->d) * (float) (sqy - zero*sy);
        }
        sumf += d * sumb;
    }
    return sumf;
}

#if defined(__AVX2__)
// codes of one block: columns 0..31 in *lo, 32..63 in *hi (one u8 each)
static inline void mlwq_decode_block_avx2(const uint8_t * GGML_RESTRICT c, int bits, __m256i * lo, __m256i * hi) {
    int planes[3];
    const int np = ggml_mlwq_planes(bits, planes);
    __m256i l = _mm256_setzero_si256();
    __m256i h = _mm256_setzero_si256();
    int shift = 0;
    for (int ip = 0; ip < np; ++ip) {
        const int p = planes[ip];
        __m256i pl, ph;
        if (p == 4) {
            // byte i: column i (low nibble), column i+32 (high nibble)
            const __m256i v = _mm256_loadu_si256((const __m256i *) c);
            const __m256i m = _mm256_set1_epi8(0x0f);
            pl = _mm256_and_si256(v, m);
            ph = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
        } else if (p == 2) {
            // byte i: columns i, i+16, i+32, i+48 in bits 0-1, 2-3, 4-5, 6-7
            const __m128i v = _mm_loadu_si128((const __m128i *) c);
            const __m256i m = _mm256_set1_epi8(0x03);
            pl = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 2), v), m);
            ph = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 6), _mm_srli_epi16(v, 4)), m);
        } else {
            // byte i: columns i, i+8, ..., i+56 in bits 0..7; column c sits in byte c%8, bit c/8
            int64_t v64;
            memcpy(&v64, c, sizeof(v64));
            const __m256i v  = _mm256_set1_epi64x(v64);
            const __m256i ml = _mm256_setr_epi8(1,1,1,1,1,1,1,1, 2,2,2,2,2,2,2,2, 4,4,4,4,4,4,4,4, 8,8,8,8,8,8,8,8);
            const __m256i mh = _mm256_setr_epi8(16,16,16,16,16,16,16,16, 32,32,32,32,32,32,32,32,
                                                64,64,64,64,64,64,64,64, -128,-128,-128,-128,-128,-128,-128,-128);
            const __m256i one = _mm256_set1_epi8(1);
            pl = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, ml), ml), one);
            ph = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, mh), mh), one);
        }
        // values stay below 256 after the shift (total width <= 8): 16-bit shifts do not spill
        const __m128i sh = _mm_cvtsi32_si128(shift);
        l = _mm256_or_si256(l, _mm256_sll_epi16(pl, sh));
        h = _mm256_or_si256(h, _mm256_sll_epi16(ph, sh));
        c += 8*p;
        shift += p;
    }
    *lo = l;
    *hi = h;
}

// 8 int32 partial sums of q*qy over 32 columns for 8-bit codes: q <= 255 is split in nibbles so
// that maddubs (u8*s8 pairs into s16) cannot saturate
static inline __m256i mlwq_dot32_wide(__m256i q, __m256i qy) {
    const __m256i ones16 = _mm256_set1_epi16(1);
    const __m256i m  = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(q, m), qy), ones16);
    const __m256i hi = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), m), qy), ones16);
    return _mm256_add_epi32(lo, _mm256_slli_epi32(hi, 4));
}

static float mlwq_vec_dot_avx2(int n, const uint8_t * GGML_RESTRICT x, const block_q8_1 * GGML_RESTRICT y, int b) {
    const int    K         = n / QK_MLWQ;
    const size_t row_bytes = (size_t) K * (GGML_MLWQ_HEADER_SIZE + 8*(size_t) b);
    size_t off = (size_t) K * GGML_MLWQ_HEADER_SIZE;
    const __m256i ones8  = _mm256_set1_epi8(1);
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int j = 0; j < K; ++j) {
        const uint8_t * h = x + 4*j;
        const int bits = h[3];
        if (!mlwq_block_ok(bits, off, row_bytes)) {
            break;
        }
        __m256i qlo, qhi;
        mlwq_decode_block_avx2(x + off, bits, &qlo, &qhi);
        off += 8*(size_t) bits;
        uint16_t d16;
        memcpy(&d16, h, sizeof(d16));
        const float   d    = GGML_CPU_FP16_TO_FP32(d16);
        const __m256i zero = _mm256_set1_epi32(h[2]);
        const bool    wide = bits == 8;

        const block_q8_1 * y0 = y + 2*j;
        const block_q8_1 * y1 = y0 + 1;
        const __m256i qy0 = _mm256_loadu_si256((const __m256i *) y0->qs);
        const __m256i qy1 = _mm256_loadu_si256((const __m256i *) y1->qs);
        __m256i i0, i1;
        if (!wide) {
            // bits <= 7: q - zero fits in int8, so the zero point folds into the codes and the
            // product is |q - z| * sign(qy, q - z) as in Q4_0 (pairs <= 2*127*127: no saturation)
            const __m256i z8 = _mm256_set1_epi8((char) h[2]);
            const __m256i a0 = _mm256_sub_epi8(qlo, z8);
            const __m256i a1 = _mm256_sub_epi8(qhi, z8);
            i0 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(a0, a0), _mm256_sign_epi8(qy0, a0)), ones16);
            i1 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(a1, a1), _mm256_sign_epi8(qy1, a1)), ones16);
        } else {
            const __m256i sy0 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, qy0), ones16);
            const __m256i sy1 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, qy1), ones16);
            i0 = _mm256_sub_epi32(mlwq_dot32_wide(qlo, qy0), _mm256_mullo_epi32(zero, sy0));
            i1 = _mm256_sub_epi32(mlwq_dot32_wide(qhi, qy1), _mm256_mullo_epi32(zero, sy1));
        }
        const __m256  s0  = _mm256_set1_ps(d * GGML_CPU_FP16_TO_FP32(y0->d));
        const __m256  s1  = _mm256_set1_ps(d * GGML_CPU_FP16_TO_FP32(y1->d));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(s0, _mm256_cvtepi32_ps(i0)));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(s1, _mm256_cvtepi32_ps(i1)));
    }
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
#endif

static inline void mlwq_vec_dot(int n, float * GGML_RESTRICT s, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nrc, int b) {
    assert(nrc == 1);
    assert(n % QK_MLWQ == 0);
    GGML_UNUSED(nrc);
#if defined(__AVX2__)
    *s = mlwq_vec_dot_avx2(n, (const uint8_t *) vx, (const block_q8_1 *) vy, b);
#else
    *s = mlwq_vec_dot_scalar(n, (const uint8_t *) vx, (const block_q8_1 *) vy, b);
#endif
}

void ggml_vec_dot_mlwq_q8_1_generic(int n, float * GGML_RESTRICT s, int b, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy) {
    *s = mlwq_vec_dot_scalar(n, (const uint8_t *) vx, (const block_q8_1 *) vy, b);
}

#define MLWQ_VEC_DOT(B) \
void ggml_vec_dot_mlwq##B##_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, \
                                 const void * GGML_RESTRICT vy, size_t by, int nrc) { \
    GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by); \
    mlwq_vec_dot(n, s, vx, vy, nrc, B); \
}
MLWQ_VEC_DOT(2)
MLWQ_VEC_DOT(3)
MLWQ_VEC_DOT(4)
