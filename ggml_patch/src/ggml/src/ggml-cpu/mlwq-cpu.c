// MLWQ types, CPU part: dot products of MLWQ rows with q8_1 rows (the activations).
//
//   per 64-column block j (two q8_1 blocks of 32, activation scale dy, int8 qy):
//   sum_i d_j*(q_i - z_j) * dy*qy_i = d_j * dy * (sum_i q_i*qy_i - z_j * sum_i qy_i)
//
// The integer sums are exact (no use of q8_1's rounded fp16 s), so the kernels differ from the
// fp32 reference only by the order of float additions. One source for every architecture, chosen
// at compile time (so every arch links without arch-fallback.h entries):
//   - AVX-512 BW + VNNI: a block's 64 codes in one register, vpdpbusd (u8 x s8, no saturation);
//   - AVX2 (+ AVX-VNNI when targeted): columns 0..31 and 32..63 in two registers;
//   - the portable C loop otherwise.
// Each call does 1 or 2 rows x 1 or 2 columns (type traits nrows = 2: in prompt processing a
// decoded block serves two activation columns). A row's decodable blocks are counted first: from
// its first corrupt header on (bits outside 1..8, codes past the row end) the row contributes 0,
// and no kernel reads past the row's K*(4+8b) bytes.
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

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define MLWQ_AVX512 1
#elif defined(__AVX2__)
#define MLWQ_AVX2 1
#endif

#define MLWQ_INLINE static inline __attribute__((always_inline))
// the tile loops must unroll completely: accumulators indexed by a runtime row live in memory
#define MLWQ_UNROLL _Pragma("GCC unroll 4")

// largest tile of ggml_mlwq_gemm: MLWQ_MR rows x MLWQ_NC columns (accumulators in registers: 32 zmm
// hold 4x4, 16 ymm only 4x2)
#define MLWQ_MR 4
#if defined(MLWQ_AVX512)
#define MLWQ_NC 4
#define mlwq_tile mlwq_tile_avx512
#else
#define MLWQ_NC 2
#define mlwq_tile mlwq_tile_avx2
#endif

// number of leading blocks of a row whose header is sane and whose codes end inside the row
static int mlwq_row_blocks(const uint8_t * x, int K, int b) {
    const size_t row_bytes = ggml_mlwq_row_bytes(K, b);
    size_t off = (size_t) K * GGML_MLWQ_HEADER_SIZE;
    for (int j = 0; j < K; ++j) {
        const int bits = x[4*j + 3];
        if (!ggml_mlwq_block_readable(bits, off, row_bytes)) {
            return j;
        }
        off += 8*(size_t) bits;
    }
    return K;
}

MLWQ_INLINE float mlwq_d(const uint8_t * h) {
    uint16_t d16;
    memcpy(&d16, h, sizeof(d16));
    return GGML_CPU_FP16_TO_FP32(d16);
}

// ---- portable C ----------------------------------------------------------------------------------

static float mlwq_vec_dot_scalar(int n, const uint8_t * GGML_RESTRICT x, const block_q8_1 * GGML_RESTRICT y, int b) {
    const int K  = n / QK_MLWQ;
    const int nb = mlwq_row_blocks(x, K, b);
    size_t off = (size_t) K * GGML_MLWQ_HEADER_SIZE;
    uint8_t q[QK_MLWQ];
    float sumf = 0.0f;
    for (int j = 0; j < nb; ++j) {
        const uint8_t * h = x + 4*j;
        ggml_mlwq_decode_block(x + off, h[3], q);
        off += 8*(size_t) h[3];
        float sumb = 0.0f;
        for (int half = 0; half < 2; ++half) {
            const block_q8_1 * yb = y + 2*j + half;
            int sqy = 0, sy = 0;
            for (int i = 0; i < QK8_1; ++i) {
                sqy += (int) q[half*QK8_1 + i] * yb->qs[i];
                sy  += yb->qs[i];
            }
            sumb += GGML_CPU_FP16_TO_FP32(yb->d) * (float) (sqy - h[2]*sy);
        }
        sumf += mlwq_d(h) * sumb;
    }
    return sumf;
}

// ---- AVX-512 -------------------------------------------------------------------------------------
#if defined(MLWQ_AVX512)
// The plane helpers return the codes of all 64 columns, one per byte (FORMAT.md, "Codes").
// 4-bit plane: byte i = column i (low nibble) | column i+32 (high nibble)
MLWQ_INLINE __m512i mlwq_p4_512(const uint8_t * c) {
    const __m256i v = _mm256_loadu_si256((const __m256i *) c);
    return _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1),
                            _mm512_set1_epi8(0x0f));
}
// 2-bit plane: byte i = columns i, i+16, i+32, i+48 in bits 0-1, 2-3, 4-5, 6-7: the 16 bytes in each
// 128-bit lane, shifted right by 0, 2, 4, 6 (16-bit shifts: the mask drops what the next byte spills)
MLWQ_INLINE __m512i mlwq_p2_512(const uint8_t * c) {
    const __m512i v  = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *) c));
    const __m512i sh = _mm512_set_epi64(0x0006000600060006, 0x0006000600060006, 0x0004000400040004, 0x0004000400040004,
                                        0x0002000200020002, 0x0002000200020002, 0, 0);
    return _mm512_and_si512(_mm512_srlv_epi16(v, sh), _mm512_set1_epi8(0x03));
}
// 1-bit plane: byte i = columns i, i+8, ..., i+56 in bits 0..7. Column c is bit c/8 of byte c%8: with
// the 8 bytes in every qword, qword k tests bit k. Returns the columns whose bit is set.
MLWQ_INLINE __mmask64 mlwq_p1_512(const uint8_t * c) {
    int64_t v;
    memcpy(&v, c, sizeof(v));
    const __m512i sel = _mm512_set_epi64(0x8080808080808080, 0x4040404040404040, 0x2020202020202020, 0x1010101010101010,
                                         0x0808080808080808, 0x0404040404040404, 0x0202020202020202, 0x0101010101010101);
    return _mm512_test_epi8_mask(_mm512_set1_epi64(v), sel);
}
// planes greedy 4, 2, 1, low bits first; constant shifts (values stay below 256, no spill)
MLWQ_INLINE __m512i mlwq_decode_512(const uint8_t * c, int bits) {
    __m512i q;
    switch (bits) {
        case 1:  return _mm512_maskz_mov_epi8(mlwq_p1_512(c), _mm512_set1_epi8(1));
        case 2:  return mlwq_p2_512(c);
        case 3:  q = mlwq_p2_512(c);
                 return _mm512_mask_add_epi8(q, mlwq_p1_512(c + 16), q, _mm512_set1_epi8(4));
        case 4:  return mlwq_p4_512(c);
        case 5:  q = mlwq_p4_512(c);
                 return _mm512_mask_add_epi8(q, mlwq_p1_512(c + 32), q, _mm512_set1_epi8(16));
        case 6:  return _mm512_or_si512(mlwq_p4_512(c), _mm512_slli_epi16(mlwq_p2_512(c + 32), 4));
        case 7:  q = _mm512_or_si512(mlwq_p4_512(c), _mm512_slli_epi16(mlwq_p2_512(c + 32), 4));
                 return _mm512_mask_add_epi8(q, mlwq_p1_512(c + 48), q, _mm512_set1_epi8(64));
        default: return _mm512_or_si512(mlwq_p4_512(c), _mm512_slli_epi16(mlwq_p4_512(c + 32), 4));   // 8
    }
}

// NR rows (x + r*bx) times NC columns (y + c*by), results in s[c*bs + r]; NR, NC are constants after
// inlining. The activations of a block (loads, fp16 scales) are shared by the NR rows, a decoded block
// by the NC columns.
MLWQ_INLINE void mlwq_tile_avx512(int K, int b, float * s, size_t bs, const uint8_t * x, size_t bx,
                                  const uint8_t * y, size_t by, const int NR, const int NC) {
    // nb[r]: row r's blocks before its first corrupt header (bits outside 1..8 or codes past the row
    // end), found on the way: from there on the row contributes 0
    const size_t row_bytes = ggml_mlwq_row_bytes(K, b);
    int nb[MLWQ_MR];
    size_t off[MLWQ_MR];
    __m512 acc[MLWQ_MR][MLWQ_NC];
    for (int r = 0; r < NR; ++r) {
        nb[r]  = K;
        off[r] = (size_t) K * GGML_MLWQ_HEADER_SIZE;
        for (int c = 0; c < NC; ++c) {
            acc[r][c] = _mm512_setzero_ps();
        }
    }
    for (int j = 0; j < K; ++j) {
        // activations of block j: 64 int8 (two q8_1 blocks) and their scales, 8 lanes each
        __m512i qy[MLWQ_NC];
        __m512i nqy[MLWQ_NC];   // -qy (q8_1 values are in -127..127), for the zero-point term
        __m512  dy[MLWQ_NC];
        MLWQ_UNROLL
        for (int c = 0; c < NC; ++c) {
            const block_q8_1 * y0 = (const block_q8_1 *) (y + c*by) + 2*j;
            qy[c] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) y0[0].qs)),
                                       _mm256_loadu_si256((const __m256i *) y0[1].qs), 1);
            nqy[c] = _mm512_sub_epi8(_mm512_setzero_si512(), qy[c]);
            dy[c] = _mm512_insertf32x8(_mm512_set1_ps(GGML_CPU_FP16_TO_FP32(y0[0].d)),
                                       _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(y0[1].d)), 1);
        }
        // The rows of a tile have the same width at block j (mlwq-export writes one width per block
        // column): then one branch on it for all NR rows, and every row's decode has a constant
        // width (measured: +11-15 % generation against a branch per row and block). Otherwise (rows of
        // different widths, a corrupt header) row by row.
        const int w0 = x[4*j + 3];
        bool uniform = true;
        MLWQ_UNROLL
        for (int r = 0; r < NR; ++r) {
            uniform = uniform && j < nb[r] && x[r*bx + 4*j + 3] == w0 && ggml_mlwq_block_readable(w0, off[r], row_bytes);
        }
// block j of row r, width W, against the NC columns; the zero-point term z*qy accumulates as
// z*(-qy) in the same exact int32 sums
#define MLWQ_ROW_BLOCK(W)                                                                                     \
        do {                                                                                              \
            const uint8_t * h = x + r*bx + 4*j;                                                           \
            const __m512i   q = mlwq_decode_512(x + r*bx + off[r], (W));                                  \
            const __m512i   z = _mm512_set1_epi8((char) h[2]);                                            \
            const __m512    d = _mm512_set1_ps(mlwq_d(h));                                                \
            off[r] += 8*(size_t) (W);                                                                     \
            MLWQ_UNROLL                                                                                   \
            for (int c = 0; c < NC; ++c) {                                                                \
                /* 16 lanes of 4 products each: lanes 0-7 columns 0..31, lanes 8-15 columns 32..63 */    \
                const __m512i i = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, qy[c]), \
                                                      z, nqy[c]);                                         \
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(d, dy[c]), acc[r][c]);   \
            }                                                                                             \
        } while (0)
        if (uniform) {
            switch (w0) {
#define MLWQ_CASE(W) case W: MLWQ_UNROLL for (int r = 0; r < NR; ++r) { MLWQ_ROW_BLOCK(W); } break
                MLWQ_CASE(1); MLWQ_CASE(2); MLWQ_CASE(3); MLWQ_CASE(4);
                MLWQ_CASE(5); MLWQ_CASE(6); MLWQ_CASE(7);
                default: MLWQ_UNROLL for (int r = 0; r < NR; ++r) { MLWQ_ROW_BLOCK(8); } break;
#undef MLWQ_CASE
            }
            continue;
        }
        MLWQ_UNROLL
        for (int r = 0; r < NR; ++r) {
            if (j >= nb[r]) {
                continue;
            }
            if (!ggml_mlwq_block_readable(x[r*bx + 4*j + 3], off[r], row_bytes)) {
                nb[r] = j;
                continue;
            }
            MLWQ_ROW_BLOCK(x[r*bx + 4*j + 3]);
        }
#undef MLWQ_ROW_BLOCK
    }
    for (int r = 0; r < NR; ++r) {
        for (int c = 0; c < NC; ++c) {
            s[c*bs + r] = _mm512_reduce_add_ps(acc[r][c]);
        }
    }
}
#endif

// ---- AVX2 ----------------------------------------------------------------------------------------
#if defined(MLWQ_AVX2)
// as the AVX-512 helpers, with columns 0..31 in lo and 32..63 in hi; each plane ORed in at `shift`
typedef struct { __m256i lo, hi; } mlwq_q64;

MLWQ_INLINE void mlwq_p4_256(mlwq_q64 * q, const uint8_t * c, int shift) {
    const __m256i v = _mm256_loadu_si256((const __m256i *) c);
    const __m256i m = _mm256_set1_epi8(0x0f);
    q->lo = _mm256_or_si256(q->lo, _mm256_slli_epi16(_mm256_and_si256(v, m), shift));
    q->hi = _mm256_or_si256(q->hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m), shift));
}
MLWQ_INLINE void mlwq_p2_256(mlwq_q64 * q, const uint8_t * c, int shift) {
    const __m128i v = _mm_loadu_si128((const __m128i *) c);
    const __m256i m = _mm256_set1_epi8(0x03);
    q->lo = _mm256_or_si256(q->lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 2), v), m), shift));
    q->hi = _mm256_or_si256(q->hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 6), _mm_srli_epi16(v, 4)), m), shift));
}
MLWQ_INLINE void mlwq_p1_256(mlwq_q64 * q, const uint8_t * c, int shift) {
    int64_t v64;
    memcpy(&v64, c, sizeof(v64));
    const __m256i v  = _mm256_set1_epi64x(v64);
    const __m256i ml = _mm256_setr_epi8(1,1,1,1,1,1,1,1, 2,2,2,2,2,2,2,2, 4,4,4,4,4,4,4,4, 8,8,8,8,8,8,8,8);
    const __m256i mh = _mm256_setr_epi8(16,16,16,16,16,16,16,16, 32,32,32,32,32,32,32,32,
                                        64,64,64,64,64,64,64,64, -128,-128,-128,-128,-128,-128,-128,-128);
    const __m256i bit = _mm256_set1_epi8((char) (1 << shift));
    q->lo = _mm256_or_si256(q->lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, ml), ml), bit));
    q->hi = _mm256_or_si256(q->hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, mh), mh), bit));
}
MLWQ_INLINE mlwq_q64 mlwq_decode_256(const uint8_t * c, int bits) {
    mlwq_q64 q = { _mm256_setzero_si256(), _mm256_setzero_si256() };
    switch (bits) {
        case 1:  mlwq_p1_256(&q, c, 0); break;
        case 2:  mlwq_p2_256(&q, c, 0); break;
        case 3:  mlwq_p2_256(&q, c, 0); mlwq_p1_256(&q, c + 16, 2); break;
        case 4:  mlwq_p4_256(&q, c, 0); break;
        case 5:  mlwq_p4_256(&q, c, 0); mlwq_p1_256(&q, c + 32, 4); break;
        case 6:  mlwq_p4_256(&q, c, 0); mlwq_p2_256(&q, c + 32, 4); break;
        case 7:  mlwq_p4_256(&q, c, 0); mlwq_p2_256(&q, c + 32, 4); mlwq_p1_256(&q, c + 48, 6); break;
        default: mlwq_p4_256(&q, c, 0); mlwq_p4_256(&q, c + 32, 4); break;   // 8
    }
    return q;
}

// 8 int32 partial sums of (q - zero)*qy over 32 columns
MLWQ_INLINE __m256i mlwq_dot32_256(__m256i q, __m256i qy, int zero, int bits) {
#if defined(__AVXVNNI__)
    // u8 x s8 products summed in int32: exact for any width
    GGML_UNUSED(bits);
    return _mm256_sub_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), q, qy),
                            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char) zero), qy));
#else
    const __m256i ones16 = _mm256_set1_epi16(1);
    if (bits <= 7) {
        // q - zero fits in int8, so the zero point folds into the codes and the product is
        // |q - z| * sign(qy, q - z) as in Q4_0 (pairs <= 2*127*127: maddubs cannot saturate)
        const __m256i a = _mm256_sub_epi8(q, _mm256_set1_epi8((char) zero));
        return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(qy, a)), ones16);
    }
    // 8 bits: q <= 255 split in nibbles so that maddubs cannot saturate
    const __m256i m  = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(q, m), qy), ones16);
    const __m256i hi = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), m), qy), ones16);
    const __m256i sy = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), qy), ones16);
    return _mm256_sub_epi32(_mm256_add_epi32(lo, _mm256_slli_epi32(hi, 4)), _mm256_mullo_epi32(_mm256_set1_epi32(zero), sy));
#endif
}

MLWQ_INLINE float mlwq_hsum_256(__m256 acc) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

// same contract as mlwq_tile_avx512
MLWQ_INLINE void mlwq_tile_avx2(int K, int b, float * s, size_t bs, const uint8_t * x, size_t bx,
                                const uint8_t * y, size_t by, const int NR, const int NC) {
    // nb[r]: row r's blocks before its first corrupt header (bits outside 1..8 or codes past the row
    // end), found on the way: from there on the row contributes 0
    const size_t row_bytes = ggml_mlwq_row_bytes(K, b);
    int nb[MLWQ_MR];
    size_t off[MLWQ_MR];
    __m256 acc[MLWQ_MR][MLWQ_NC];
    for (int r = 0; r < NR; ++r) {
        nb[r]  = K;
        off[r] = (size_t) K * GGML_MLWQ_HEADER_SIZE;
        for (int c = 0; c < NC; ++c) {
            acc[r][c] = _mm256_setzero_ps();
        }
    }
    for (int j = 0; j < K; ++j) {
        MLWQ_UNROLL
        for (int r = 0; r < NR; ++r) {
            if (j >= nb[r]) {
                continue;
            }
            const uint8_t * h = x + r*bx + 4*j;
            if (!ggml_mlwq_block_readable(h[3], off[r], row_bytes)) {
                nb[r] = j;
                continue;
            }
            const mlwq_q64  q = mlwq_decode_256(x + r*bx + off[r], h[3]);
            const float     d = mlwq_d(h);
            off[r] += 8*(size_t) h[3];
            MLWQ_UNROLL
            for (int c = 0; c < NC; ++c) {
                const block_q8_1 * y0 = (const block_q8_1 *) (y + c*by) + 2*j;
                const __m256i i0 = mlwq_dot32_256(q.lo, _mm256_loadu_si256((const __m256i *) y0[0].qs), h[2], h[3]);
                const __m256i i1 = mlwq_dot32_256(q.hi, _mm256_loadu_si256((const __m256i *) y0[1].qs), h[2], h[3]);
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(d * GGML_CPU_FP16_TO_FP32(y0[0].d)), _mm256_cvtepi32_ps(i0), acc[r][c]);
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(d * GGML_CPU_FP16_TO_FP32(y0[1].d)), _mm256_cvtepi32_ps(i1), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < NR; ++r) {
        for (int c = 0; c < NC; ++c) {
            s[c*bs + r] = mlwq_hsum_256(acc[r][c]);
        }
    }
}
#endif

// ---- entry points --------------------------------------------------------------------------------

// nrc == 1: s[0] = row x . column y; nrc == 2 (type traits nrows = 2, from ggml's mul_mat): rows x and
// x + bx, columns y and y + by (bytes), s[c*bs + r] (bs in floats), as ggml's 2x2 (i8mm) kernels
static inline void mlwq_vec_dot(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
                                const void * GGML_RESTRICT vy, size_t by, int nrc, int b) {
    assert(nrc == 1 || nrc == 2);
    assert(n % QK_MLWQ == 0);
    const uint8_t * x = (const uint8_t *) vx;
    const uint8_t * y = (const uint8_t *) vy;
#if defined(MLWQ_AVX512) || defined(MLWQ_AVX2)
    if (nrc == 2) {
        mlwq_tile(n / QK_MLWQ, b, s, bs, x, bx, y, by, 2, 2);
    } else {
        mlwq_tile(n / QK_MLWQ, b, s, bs, x, bx, y, by, 1, 1);
    }
#else
    for (int c = 0; c < nrc; ++c) {
        for (int r = 0; r < nrc; ++r) {
            s[c*bs + r] = mlwq_vec_dot_scalar(n, x + r*bx, (const block_q8_1 *) (y + c*by), b);
        }
    }
#endif
}

void ggml_vec_dot_mlwq_q8_1_generic(int n, float * GGML_RESTRICT s, int b, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy) {
    *s = mlwq_vec_dot_scalar(n, (const uint8_t *) vx, (const block_q8_1 *) vy, b);
}

#define MLWQ_VEC_DOT(B) \
void ggml_vec_dot_mlwq##B##_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, \
                                 const void * GGML_RESTRICT vy, size_t by, int nrc) { \
    mlwq_vec_dot(n, s, bs, vx, bx, vy, by, nrc, B); \
}
MLWQ_VEC_DOT(2)
MLWQ_VEC_DOT(3)
MLWQ_VEC_DOT(4)

bool ggml_mlwq_gemm(int ith, int nth, int64_t m, int64_t n, int64_t k, const void * A, int64_t lda,
                    const void * B, int64_t ldb, void * C, int64_t ldc, int Atype, int Btype, int Ctype) {
#if defined(MLWQ_AVX512) || defined(MLWQ_AVX2)
    const int b = ggml_mlwq_type_width((enum ggml_type) Atype);
    if (b == 0 || Btype != GGML_TYPE_Q8_1 || Ctype != GGML_TYPE_F32) {
        return false;   // src1 not yet quantized (mul_mat asks first with F32): after the conversion
    }
    const size_t bx = ggml_mlwq_row_bytes(lda, b);
    const size_t by = (size_t) ldb * sizeof(block_q8_1);
    const uint8_t * x = (const uint8_t *) A;
    const uint8_t * y = (const uint8_t *) B;
    float * s = (float *) C;
    // this thread's rows: a contiguous share of the MLWQ_MR-row tiles
    const int64_t ntiles = (m + MLWQ_MR - 1) / MLWQ_MR;
    const int64_t r0 = MLWQ_MR * (ntiles * ith / nth);
    const int64_t r1 = MLWQ_MR * (ntiles * (ith + 1) / nth) < m ? MLWQ_MR * (ntiles * (ith + 1) / nth) : m;
    for (int64_t r = r0; r < r1; r += MLWQ_MR) {
        const uint8_t * xr = x + r*bx;
        int64_t c = 0;
        // generation streams the weights once from memory: ask for the tile after next now (a tile
        // takes about one memory latency to compute). Prefetches never fault past the tensor.
        for (size_t p = 0; p < MLWQ_MR*bx; p += 64) {
            _mm_prefetch((const char *) xr + 2*MLWQ_MR*bx + p, _MM_HINT_T0);
        }
        if (r + MLWQ_MR <= r1) {
            for (; c + MLWQ_NC <= n; c += MLWQ_NC) {
                mlwq_tile((int) k, b, s + c*ldc + r, (size_t) ldc, xr, bx, y + c*by, by, MLWQ_MR, MLWQ_NC);
            }
            for (; c < n; ++c) {
                mlwq_tile((int) k, b, s + c*ldc + r, (size_t) ldc, xr, bx, y + c*by, by, MLWQ_MR, 1);
            }
        } else {
            for (int64_t rr = r; rr < r1; ++rr) {
                for (c = 0; c + MLWQ_NC <= n; c += MLWQ_NC) {
                    mlwq_tile((int) k, b, s + c*ldc + rr, (size_t) ldc, x + rr*bx, bx, y + c*by, by, 1, MLWQ_NC);
                }
                for (; c < n; ++c) {
                    mlwq_tile((int) k, b, s + c*ldc + rr, (size_t) ldc, x + rr*bx, bx, y + c*by, by, 1, 1);
                }
            }
        }
    }
    return true;
#else
    GGML_UNUSED(ith); GGML_UNUSED(nth); GGML_UNUSED(m); GGML_UNUSED(n); GGML_UNUSED(k); GGML_UNUSED(A);
    GGML_UNUSED(lda); GGML_UNUSED(B); GGML_UNUSED(ldb); GGML_UNUSED(C); GGML_UNUSED(ldc);
    GGML_UNUSED(Atype); GGML_UNUSED(Btype); GGML_UNUSED(Ctype);
    return false;       // portable build: ggml's vec_dot loop
#endif
}

void ggml_mlwq_from_float_permuted(enum ggml_type vec_dot_type, ggml_from_float_t from_float,
                                   const float * GGML_RESTRICT x, const int32_t * GGML_RESTRICT perm,
                                   int64_t n, void * GGML_RESTRICT y) {
    // gather a chunk, quantize it: the chunk stays in L1 and from_float keeps its SIMD path
    enum { CHUNK = 256 };
    float buf[CHUNK];
    const int64_t bs = ggml_blck_size(vec_dot_type);
    assert(n % bs == 0 && CHUNK % bs == 0);
    char * out = (char *) y;
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
        const int64_t len = n - i0 < CHUNK ? n - i0 : CHUNK;
        for (int64_t i = 0; i < len; ++i) {
            buf[i] = x[perm[i0 + i]];
        }
        from_float(buf, out, len);
        out += ggml_row_size(vec_dot_type, len);
    }
    GGML_UNUSED(bs);
}
