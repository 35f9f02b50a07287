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
//   - AArch64 NEON: a block's codes in four registers of 16 columns, minus the zero point as int8;
//     vdotq_s32 with the dotprod extension (ARMv8.2+), int16 products (smull/smlal) on ARMv8.0,
//     chosen by __ARM_FEATURE_DOTPROD as ggml's own ARM kernels are (ggml_patch/arm_check.sh checks
//     both under qemu; ggml_patch/tools/arm_mca.py estimates their cost);
//   - the portable C loop otherwise.
// Each call does 1 or 2 rows x 1 or 2 columns (type traits nrows = 2: in prompt processing a
// decoded block serves two activation columns). ggml_mlwq_gemm, what mul_mat runs, takes tiles of
// 4 rows in generation and, on x86, panels of 16 (AVX-512) or 8 (AVX2) rows in int32 lanes for
// prompts (FORMAT.md, "Dot product"). A row's decodable blocks are counted first: from
// its first corrupt header on (codes past the row end) the row contributes 0,
// and no kernel reads past the row's K*(2+8b) bytes. x86 builds (AVX2 or AVX-512) also multiply
// weights repacked into groups of 8 interleaved rows (ggml_mlwq_x8_*, FORMAT.md "Repacked rows"),
// which ggml's CPU_REPACK buffer holds (mlwq-repack.cpp).
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
#elif defined(__ARM_NEON) && defined(__aarch64__) && !defined(__AARCH64EB__)
#define MLWQ_NEON 1
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
#elif defined(MLWQ_NEON) && defined(__clang__)
// 4x4 (16 accumulators, 16 activation registers): with clang up to 11 % fewer estimated cycles per product
// than 4x2 (ggml_patch/tools/arm_mca.py), and nearly no spills (17 vector stack accesses in the 4x4
// tile's code); GCC 12 spills it heavily (about 800 there, against about 180 in its 4x2 tile), so GCC
// builds take 4x2
#define MLWQ_NC 4
#define mlwq_tile mlwq_tile_neon
#elif defined(MLWQ_NEON)
#define MLWQ_NC 2
#define mlwq_tile mlwq_tile_neon
#else
#define MLWQ_NC 2
#define mlwq_tile mlwq_tile_avx2
#endif

// number of leading blocks of a row whose header is sane and whose codes end inside the row
static int mlwq_row_blocks(const uint8_t * x, int K, int b) {
    const size_t row_bytes = ggml_mlwq_row_bytes(K, b);
    size_t off = (size_t) K * GGML_MLWQ_HEADER_SIZE;
    for (int j = 0; j < K; ++j) {
        const int bits = ggml_mlwq_hdr_bits(x + GGML_MLWQ_HEADER_SIZE*j);
        if (!ggml_mlwq_block_readable(bits, off, row_bytes)) {
            return j;
        }
        off += 8*(size_t) bits;
    }
    return K;
}

MLWQ_INLINE float mlwq_d(const uint8_t * h) {
    return ggml_mlwq_hdr_scale(h);
}

// ---- portable C ----------------------------------------------------------------------------------

static float mlwq_vec_dot_scalar(int n, const uint8_t * GGML_RESTRICT x, const block_q8_1 * GGML_RESTRICT y, int b) {
    const int K  = n / QK_MLWQ;
    const int nb = mlwq_row_blocks(x, K, b);
    size_t off = (size_t) K * GGML_MLWQ_HEADER_SIZE;
    uint8_t q[QK_MLWQ];
    float sumf = 0.0f;
    for (int j = 0; j < nb; ++j) {
        const uint8_t * h = x + GGML_MLWQ_HEADER_SIZE*j;
        ggml_mlwq_decode_block(x + off, ggml_mlwq_hdr_bits(h), q);
        off += 8*(size_t) ggml_mlwq_hdr_bits(h);
        float sumb = 0.0f;
        for (int half = 0; half < 2; ++half) {
            const block_q8_1 * yb = y + 2*j + half;
            int sqy = 0, sy = 0;
            for (int i = 0; i < QK8_1; ++i) {
                sqy += (int) q[half*QK8_1 + i] * yb->qs[i];
                sy  += yb->qs[i];
            }
            sumb += GGML_CPU_FP16_TO_FP32(yb->d) * (float) (sqy - ggml_mlwq_hdr_zero(h)*sy);
        }
        sumf += mlwq_d(h) * sumb;
    }
    return sumf;
}

#if defined(MLWQ_AVX512) || defined(MLWQ_AVX2)
// The x86 tiles' branch on the width: the width all NR rows share at block j, every row still
// reading and the block readable in each; 0 otherwise (rows of different widths, a corrupt header:
// then the tile goes row by row)
MLWQ_INLINE int mlwq_tile_width(const uint8_t * x, size_t bx, int j, const int NR, const int * nb, const size_t * off,
                                size_t row_bytes) {
    const int w0 = ggml_mlwq_hdr_bits(x + GGML_MLWQ_HEADER_SIZE*j);
    bool uniform = true;
    MLWQ_UNROLL
    for (int r = 0; r < NR; ++r) {
        uniform = uniform && j < nb[r] && ggml_mlwq_hdr_bits(x + r*bx + GGML_MLWQ_HEADER_SIZE*j) == w0 && ggml_mlwq_block_readable(w0, off[r], row_bytes);
    }
    return uniform ? w0 : 0;
}
#endif

// ---- prompt processing on x86: panels of rows in int32 lanes ---------------------------------------
#if defined(MLWQ_AVX512) || defined(MLWQ_AVX2)
#define MLWQ_PANEL 1
#define MLWQ_UNROLL8 _Pragma("GCC unroll 8")
// columns of a panel tile (accumulators in registers)
#if defined(MLWQ_AVX512)
#define MLWQ_PNC 8
#else
#define MLWQ_PNC 4
#endif
// from this many columns on panels beat the 4-row tiles (llama-bench pp2..pp8, AVX-512 and AVX2
// builds on an AMD EPYC: tiles ahead at 4 columns, panels at 6)
#define MLWQ_PANEL_MIN_N 6

// one activation column at block j: the two q8_1 scales and the exact sums of their 32 int8
typedef struct {
    float dy[2];
    float sy[2];
} mlwq_ycol;

MLWQ_INLINE int mlwq_sum32_i8(const int8_t * q) {
    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *) q)),
                                        _mm256_set1_epi16(1));
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0x4e));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0xb1));
    return _mm_cvtsi128_si32(r);
}

static void mlwq_ycols(int K, int64_t n, const uint8_t * y, size_t by, mlwq_ycol * yc) {
    for (int64_t c = 0; c < n; ++c) {
        const block_q8_1 * yb = (const block_q8_1 *) (y + c*by);
        for (int j = 0; j < 2*K; ++j) {
            yc[c*K + j/2].dy[j % 2] = GGML_CPU_FP16_TO_FP32(yb[j].d);
            yc[c*K + j/2].sy[j % 2] = (float) mlwq_sum32_i8(yb[j].qs);
        }
    }
}

// The thread's scratch for panels (a decoded panel, the columns' scales and sums), grown as needed
// and kept for the thread's life: ggml's worker threads live as long as their pool.
static _Thread_local void * mlwq_scratch_buf;
static _Thread_local size_t mlwq_scratch_size;

static void * mlwq_scratch(size_t size) {
    if (size > mlwq_scratch_size) {
        if (mlwq_scratch_buf) {
            ggml_aligned_free(mlwq_scratch_buf, mlwq_scratch_size);
        }
        size = (size + 4095) & ~(size_t) 4095;
        mlwq_scratch_buf  = ggml_aligned_malloc(size);
        mlwq_scratch_size = mlwq_scratch_buf ? size : 0;
    }
    return mlwq_scratch_buf;
}
#endif

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
        const int w0 = mlwq_tile_width(x, bx, j, NR, nb, off, row_bytes);
// block j of row r, width W, against the NC columns; the zero-point term z*qy accumulates as
// z*(-qy) in the same exact int32 sums
#define MLWQ_ROW_BLOCK(W)                                                                                     \
        do {                                                                                              \
            const uint8_t * h = x + r*bx + GGML_MLWQ_HEADER_SIZE*j;                                                           \
            const __m512i   q = mlwq_decode_512(x + r*bx + off[r], (W));                                  \
            const __m512i   z = _mm512_set1_epi8((char) ggml_mlwq_hdr_zero(h));                                            \
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
        if (w0 != 0) {
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
            if (!ggml_mlwq_block_readable(ggml_mlwq_hdr_bits(x + r*bx + GGML_MLWQ_HEADER_SIZE*j), off[r], row_bytes)) {
                nb[r] = j;
                continue;
            }
            MLWQ_ROW_BLOCK(ggml_mlwq_hdr_bits(x + r*bx + GGML_MLWQ_HEADER_SIZE*j));
        }
#undef MLWQ_ROW_BLOCK
    }
    for (int r = 0; r < NR; ++r) {
        for (int c = 0; c < NC; ++c) {
            s[c*bs + r] = _mm512_reduce_add_ps(acc[r][c]);
        }
    }
}

// Prompt processing: 16 rows x NC columns per tile, one int32 lane per row (llama.cpp's repacked
// gemm layout), so a vpdpbusd does 64 products of 16 rows against one broadcast dword of activations
// and nothing is reduced across lanes. A panel of 16 rows is decoded once into the thread's scratch
// (mlwq_pblock512 per block: the 16 rows' codes transposed to 16 groups of 4 columns) and then serves
// every column. Per half block the int32 sums S = sum q*qy are exact and S - zero*sum(qy) is formed
// exactly in float (|S| < 2^24), so the outputs equal the tile kernel's up to float rounding order.
typedef struct {
    __m512i q[16];   // group g: columns 4g..4g+3 of the block, row r in lane r
    __m512  d;       // row scales; 0 for rows past the panel or past their first unreadable block
    __m512  z;       // row zero points
    __mmask16 live;  // rows that reach this block: the others add nothing (not even 0 * inf)
} mlwq_pblock512;

// r[i] = dword i of each of the 16 inputs: a 16x16 transpose of 32-bit elements
MLWQ_INLINE void mlwq_transpose16_epi32(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; ++i) {
        t[2*i]     = _mm512_unpacklo_epi32(r[2*i], r[2*i + 1]);
        t[2*i + 1] = _mm512_unpackhi_epi32(r[2*i], r[2*i + 1]);
    }
    __m512i s[4][4];   // s[k][p], 128-bit lane L: dword 4L+p of inputs 4k..4k+3
    for (int k = 0; k < 4; ++k) {
        s[k][0] = _mm512_unpacklo_epi64(t[4*k],     t[4*k + 2]);
        s[k][1] = _mm512_unpackhi_epi64(t[4*k],     t[4*k + 2]);
        s[k][2] = _mm512_unpacklo_epi64(t[4*k + 1], t[4*k + 3]);
        s[k][3] = _mm512_unpackhi_epi64(t[4*k + 1], t[4*k + 3]);
    }
    for (int p = 0; p < 4; ++p) {
        const __m512i p0 = _mm512_shuffle_i32x4(s[0][p], s[1][p], 0x44);
        const __m512i p1 = _mm512_shuffle_i32x4(s[0][p], s[1][p], 0xee);
        const __m512i p2 = _mm512_shuffle_i32x4(s[2][p], s[3][p], 0x44);
        const __m512i p3 = _mm512_shuffle_i32x4(s[2][p], s[3][p], 0xee);
        r[p]      = _mm512_shuffle_i32x4(p0, p2, 0x88);
        r[4 + p]  = _mm512_shuffle_i32x4(p0, p2, 0xdd);
        r[8 + p]  = _mm512_shuffle_i32x4(p1, p3, 0x88);
        r[12 + p] = _mm512_shuffle_i32x4(p1, p3, 0xdd);
    }
}

// rows x + r*bx, r < nr (<= 16), decoded into P[0..K-1]
static void mlwq_panel_decode512(int K, int b, const uint8_t * x, size_t bx, int nr, mlwq_pblock512 * P) {
    const size_t row_bytes = ggml_mlwq_row_bytes(K, b);
    size_t off[16];
    bool live[16];
    for (int r = 0; r < 16; ++r) {
        off[r]  = (size_t) K * GGML_MLWQ_HEADER_SIZE;
        live[r] = r < nr;
    }
    for (int j = 0; j < K; ++j) {
        __m512i q[16];
        float d[16], z[16];
        unsigned live_mask = 0;
        for (int r = 0; r < 16; ++r) {
            q[r] = _mm512_setzero_si512();
            d[r] = z[r] = 0.0f;
            if (!live[r]) {
                continue;
            }
            const uint8_t * h = x + r*bx + GGML_MLWQ_HEADER_SIZE*j;
            const int w = ggml_mlwq_hdr_bits(h);
            if (!ggml_mlwq_block_readable(w, off[r], row_bytes)) {
                live[r] = false;   // from its first corrupt header on the row contributes 0
                continue;
            }
            q[r] = mlwq_decode_512(x + r*bx + off[r], w);
            live_mask |= 1u << r;
            d[r] = mlwq_d(h);
            z[r] = (float) ggml_mlwq_hdr_zero(h);
            off[r] += 8*(size_t) w;
        }
        mlwq_transpose16_epi32(q);
        for (int g = 0; g < 16; ++g) {
            _mm512_store_si512(&P[j].q[g], q[g]);
        }
        P[j].d = _mm512_loadu_ps(d);
        P[j].z = _mm512_loadu_ps(z);
        P[j].live = (__mmask16) live_mask;
    }
}

// the 16 rows of panel P against NC columns (q8_1 at y + c*by, their sums yc + c*K), s[c*ldc + r] for r < nr
MLWQ_INLINE void mlwq_panel_tile512(int K, const mlwq_pblock512 * P, const uint8_t * y, size_t by,
                                    const mlwq_ycol * yc, float * s, size_t ldc, int nr, const int NC) {
    __m512 acc[MLWQ_PNC];
    MLWQ_UNROLL8
    for (int c = 0; c < NC; ++c) {
        acc[c] = _mm512_setzero_ps();
    }
    for (int j = 0; j < K; ++j) {
        const mlwq_pblock512 * pb = P + j;
        __m512 t[MLWQ_PNC];
        for (int h = 0; h < 2; ++h) {
            __m512i i[MLWQ_PNC];
            MLWQ_UNROLL8
            for (int c = 0; c < NC; ++c) {
                i[c] = _mm512_setzero_si512();
            }
            MLWQ_UNROLL8
            for (int g = 0; g < 8; ++g) {
                const __m512i w = _mm512_load_si512(&pb->q[8*h + g]);
                MLWQ_UNROLL8
                for (int c = 0; c < NC; ++c) {
                    const block_q8_1 * yb = (const block_q8_1 *) (y + c*by) + 2*j + h;
                    int32_t a;
                    memcpy(&a, yb->qs + 4*g, sizeof(a));
                    i[c] = _mm512_dpbusd_epi32(i[c], w, _mm512_set1_epi32(a));
                }
            }
            MLWQ_UNROLL8
            for (int c = 0; c < NC; ++c) {
                const mlwq_ycol * p = yc + (size_t) c*K + j;
                // S - zero*sum(qy): integers below 2^24, exact
                const __m512 f = _mm512_fnmadd_ps(pb->z, _mm512_set1_ps(p->sy[h]), _mm512_cvtepi32_ps(i[c]));
                t[c] = h == 0 ? _mm512_mul_ps(f, _mm512_set1_ps(p->dy[0])) : _mm512_fmadd_ps(f, _mm512_set1_ps(p->dy[1]), t[c]);
            }
        }
        MLWQ_UNROLL8
        for (int c = 0; c < NC; ++c) {
            acc[c] = _mm512_mask3_fmadd_ps(pb->d, t[c], acc[c], pb->live);
        }
    }
    const __mmask16 m = (__mmask16) (nr >= 16 ? 0xffff : (1u << nr) - 1);
    MLWQ_UNROLL8
    for (int c = 0; c < NC; ++c) {
        _mm512_mask_storeu_ps(s + c*ldc, m, acc[c]);
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

// 8 int32 partial sums of (q - zero)*qy over 32 columns of width 8 (q - zero may not fit in int8)
MLWQ_INLINE __m256i mlwq_dot32_w8_256(__m256i q, __m256i qy, int zero) {
#if defined(__AVXVNNI__)
    // u8 x s8 products summed in int32: exact
    return _mm256_sub_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), q, qy),
                            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char) zero), qy));
#else
    // q <= 255 split in nibbles so that maddubs cannot saturate
    const __m256i ones16 = _mm256_set1_epi16(1);
    const __m256i m  = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(q, m), qy), ones16);
    const __m256i hi = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), m), qy), ones16);
    const __m256i sy = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), qy), ones16);
    return _mm256_sub_epi32(_mm256_add_epi32(lo, _mm256_slli_epi32(hi, 4)), _mm256_mullo_epi32(_mm256_set1_epi32(zero), sy));
#endif
}

// one activation column at block j, loaded once for the tile's rows: qy and |qy| of both halves
// (columns 0..31, 32..63) and their scales
typedef struct { __m256i y[2], ay[2]; __m256 d[2]; } mlwq_y256;

MLWQ_INLINE mlwq_y256 mlwq_load_y256(const block_q8_1 * y0) {
    mlwq_y256 v;
    for (int h = 0; h < 2; ++h) {
        v.y[h]  = _mm256_loadu_si256((const __m256i *) y0[h].qs);
        v.ay[h] = _mm256_sign_epi8(v.y[h], v.y[h]);
        v.d[h]  = _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(y0[h].d));
    }
    return v;
}

// 8 int32 partial sums of a*qy over 32 columns, a = q - zero in int8 (widths 1..7): |qy| times
// a with qy's sign, so the sign work is the activations' and done once per tile (pairs <= 2*127*127)
MLWQ_INLINE __m256i mlwq_dot32_s8(__m256i a, __m256i qy, __m256i aqy) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), aqy, _mm256_sign_epi8(a, qy));
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aqy, _mm256_sign_epi8(a, qy)), _mm256_set1_epi16(1));
#endif
}

// 8 int32 partial sums of (q - zero)*qy over 32 columns of width W, qy with its |qy|
MLWQ_INLINE __m256i mlwq_dot32_256(__m256i q, int zero, int W, __m256i qy, __m256i aqy) {
    return W <= 7 ? mlwq_dot32_s8(_mm256_sub_epi8(q, _mm256_set1_epi8((char) zero)), qy, aqy)
                  : mlwq_dot32_w8_256(q, qy, zero);
}

MLWQ_INLINE float mlwq_hsum_256(__m256 acc) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

// same contract as mlwq_tile_avx512, and the same branch on the block's width for all NR rows
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
        mlwq_y256 yv[MLWQ_NC];
        MLWQ_UNROLL
        for (int c = 0; c < NC; ++c) {
            yv[c] = mlwq_load_y256((const block_q8_1 *) (y + c*by) + 2*j);
        }
        const int w0 = mlwq_tile_width(x, bx, j, NR, nb, off, row_bytes);
// block j of row r, width W, against the NC columns
#define MLWQ_ROW_BLOCK(W)                                                                                 \
        do {                                                                                              \
            const uint8_t * h = x + r*bx + GGML_MLWQ_HEADER_SIZE*j;                                       \
            const mlwq_q64  q = mlwq_decode_256(x + r*bx + off[r], (W));                                  \
            const __m256    d = _mm256_set1_ps(mlwq_d(h));                                                \
            off[r] += 8*(size_t) (W);                                                                     \
            MLWQ_UNROLL                                                                                   \
            for (int c = 0; c < NC; ++c) {                                                                \
                const __m256i i0 = mlwq_dot32_256(q.lo, ggml_mlwq_hdr_zero(h), (W), yv[c].y[0], yv[c].ay[0]); \
                const __m256i i1 = mlwq_dot32_256(q.hi, ggml_mlwq_hdr_zero(h), (W), yv[c].y[1], yv[c].ay[1]); \
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(d, yv[c].d[0]), _mm256_cvtepi32_ps(i0), acc[r][c]); \
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(d, yv[c].d[1]), _mm256_cvtepi32_ps(i1), acc[r][c]); \
            }                                                                                             \
        } while (0)
        if (w0 != 0) {
            switch (w0) {
#define MLWQ_CASE(W) case W: MLWQ_UNROLL for (int r = 0; r < NR; ++r) { MLWQ_ROW_BLOCK(W); } break
                MLWQ_CASE(1); MLWQ_CASE(2); MLWQ_CASE(3); MLWQ_CASE(4);
                MLWQ_CASE(5); MLWQ_CASE(6); MLWQ_CASE(7);
                default: MLWQ_UNROLL for (int r = 0; r < NR; ++r) { MLWQ_ROW_BLOCK(8); } break;
#undef MLWQ_CASE
            }
            continue;
        }
        // rows of different widths at this block, or a corrupt header: row by row
        MLWQ_UNROLL
        for (int r = 0; r < NR; ++r) {
            if (j >= nb[r]) {
                continue;
            }
            if (!ggml_mlwq_block_readable(ggml_mlwq_hdr_bits(x + r*bx + GGML_MLWQ_HEADER_SIZE*j), off[r], row_bytes)) {
                nb[r] = j;
                continue;
            }
            MLWQ_ROW_BLOCK(ggml_mlwq_hdr_bits(x + r*bx + GGML_MLWQ_HEADER_SIZE*j));
        }
#undef MLWQ_ROW_BLOCK
    }
    for (int r = 0; r < NR; ++r) {
        for (int c = 0; c < NC; ++c) {
            s[c*bs + r] = mlwq_hsum_256(acc[r][c]);
        }
    }
}

// Prompt processing, as the AVX-512 panel (above) with 8 rows: one int32 lane per row, vpmaddubsw of
// the rows' codes (unsigned) with a broadcast dword of activations, vpmaddwd to int32. No saturation:
// a pair of products is at most 2*127*127 for widths <= 7, and two pairs are added in int16 only
// when every width of the panel is <= 6 (4*63*127 < 2^15). Panels with a width-8 block take the tile.
typedef struct {
    __m256i q[16];   // group g: columns 4g..4g+3 of the block, row r in lane r
    __m256  d;       // row scales; 0 for rows past the panel or past their first unreadable block
    __m256  z;       // row zero points
    __m256  live;    // all-ones lanes for rows that reach this block: the others add nothing (not even 0 * inf)
    int     dead;    // some row of the panel stopped before this block
} mlwq_pblock256;

// r[i] = dword i of each of the 8 inputs: an 8x8 transpose of 32-bit elements
MLWQ_INLINE void mlwq_transpose8_epi32(__m256i r[8]) {
    __m256i t[8];
    for (int i = 0; i < 4; ++i) {
        t[2*i]     = _mm256_unpacklo_epi32(r[2*i], r[2*i + 1]);
        t[2*i + 1] = _mm256_unpackhi_epi32(r[2*i], r[2*i + 1]);
    }
    __m256i s[2][4];   // s[k][p], 128-bit lane L: dword 4L+p of inputs 4k..4k+3
    for (int k = 0; k < 2; ++k) {
        s[k][0] = _mm256_unpacklo_epi64(t[4*k],     t[4*k + 2]);
        s[k][1] = _mm256_unpackhi_epi64(t[4*k],     t[4*k + 2]);
        s[k][2] = _mm256_unpacklo_epi64(t[4*k + 1], t[4*k + 3]);
        s[k][3] = _mm256_unpackhi_epi64(t[4*k + 1], t[4*k + 3]);
    }
    for (int p = 0; p < 4; ++p) {
        r[p]     = _mm256_permute2x128_si256(s[0][p], s[1][p], 0x20);
        r[4 + p] = _mm256_permute2x128_si256(s[0][p], s[1][p], 0x31);
    }
}

// rows x + r*bx, r < nr (<= 8), decoded into P[0..K-1]; returns the widest block width
static int mlwq_panel_decode256(int K, int b, const uint8_t * x, size_t bx, int nr, mlwq_pblock256 * P) {
    const size_t row_bytes = ggml_mlwq_row_bytes(K, b);
    size_t off[8];
    bool alive[8];
    int wmax = 1;
    for (int r = 0; r < 8; ++r) {
        off[r]   = (size_t) K * GGML_MLWQ_HEADER_SIZE;
        alive[r] = r < nr;
    }
    for (int j = 0; j < K; ++j) {
        __m256i lo[8], hi[8];
        float d[8], z[8];
        int32_t lane[8];
        int dead = 0;
        for (int r = 0; r < 8; ++r) {
            lo[r] = hi[r] = _mm256_setzero_si256();
            d[r] = z[r] = 0.0f;
            lane[r] = 0;
            if (alive[r]) {
                const uint8_t * h = x + r*bx + GGML_MLWQ_HEADER_SIZE*j;
                const int w = ggml_mlwq_hdr_bits(h);
                if (ggml_mlwq_block_readable(w, off[r], row_bytes)) {
                    const mlwq_q64 q = mlwq_decode_256(x + r*bx + off[r], w);
                    lo[r] = q.lo;
                    hi[r] = q.hi;
                    d[r] = mlwq_d(h);
                    z[r] = (float) ggml_mlwq_hdr_zero(h);
                    lane[r] = -1;
                    off[r] += 8*(size_t) w;
                    wmax = w > wmax ? w : wmax;
                } else {
                    alive[r] = false;   // from its first corrupt header on the row contributes 0
                }
            }
            dead |= r < nr && !alive[r];
        }
        mlwq_transpose8_epi32(lo);
        mlwq_transpose8_epi32(hi);
        for (int g = 0; g < 8; ++g) {
            _mm256_store_si256(&P[j].q[g],     lo[g]);
            _mm256_store_si256(&P[j].q[8 + g], hi[g]);
        }
        P[j].d    = _mm256_loadu_ps(d);
        P[j].z    = _mm256_loadu_ps(z);
        P[j].live = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *) lane));
        P[j].dead = dead;
    }
    return wmax;
}

// the 8 rows of panel P against NC columns, as mlwq_panel_tile512; PAIR: widths <= 6 (two product
// pairs summed in int16)
MLWQ_INLINE void mlwq_panel_tile256(int K, const mlwq_pblock256 * P, const uint8_t * y, size_t by,
                                    const mlwq_ycol * yc, float * s, size_t ldc, int nr, const int NC, const bool PAIR) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[MLWQ_PNC];
    MLWQ_UNROLL8
    for (int c = 0; c < NC; ++c) {
        acc[c] = _mm256_setzero_ps();
    }
    for (int j = 0; j < K; ++j) {
        const mlwq_pblock256 * pb = P + j;
        for (int h = 0; h < 2; ++h) {
            __m256i i[MLWQ_PNC];
            MLWQ_UNROLL8
            for (int c = 0; c < NC; ++c) {
                i[c] = _mm256_setzero_si256();
            }
            MLWQ_UNROLL8
            for (int g = 0; g < 8; g += 2) {
                const __m256i w0 = _mm256_load_si256(&pb->q[8*h + g]);
                const __m256i w1 = _mm256_load_si256(&pb->q[8*h + g + 1]);
                MLWQ_UNROLL8
                for (int c = 0; c < NC; ++c) {
                    const block_q8_1 * yb = (const block_q8_1 *) (y + c*by) + 2*j + h;
                    int32_t a0, a1;
                    memcpy(&a0, yb->qs + 4*g,     sizeof(a0));
                    memcpy(&a1, yb->qs + 4*g + 4, sizeof(a1));
                    const __m256i p0 = _mm256_maddubs_epi16(w0, _mm256_set1_epi32(a0));
                    const __m256i p1 = _mm256_maddubs_epi16(w1, _mm256_set1_epi32(a1));
                    i[c] = PAIR ? _mm256_add_epi32(i[c], _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones))
                                : _mm256_add_epi32(i[c], _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones)));
                }
            }
            MLWQ_UNROLL8
            for (int c = 0; c < NC; ++c) {
                const mlwq_ycol * p = yc + (size_t) c*K + j;
                // S - zero*sum(qy): integers below 2^24, exact
                const __m256 f = _mm256_fnmadd_ps(pb->z, _mm256_set1_ps(p->sy[h]), _mm256_cvtepi32_ps(i[c]));
                const __m256 a = _mm256_fmadd_ps(f, _mm256_mul_ps(pb->d, _mm256_set1_ps(p->dy[h])), acc[c]);
                acc[c] = pb->dead ? _mm256_blendv_ps(acc[c], a, pb->live) : a;
            }
        }
    }
    // rows past nr: store through a buffer (AVX2 has no masked float store by count)
    MLWQ_UNROLL8
    for (int c = 0; c < NC; ++c) {
        if (nr >= 8) {
            _mm256_storeu_ps(s + c*ldc, acc[c]);
        } else {
            float tmp[8];
            _mm256_storeu_ps(tmp, acc[c]);
            memcpy(s + c*ldc, tmp, sizeof(float) * (size_t) nr);
        }
    }
}
#endif

// ---- repacked rows (x86 builds): groups of 8 rows interleaved ------------------------------------
// FORMAT.md, "Repacked rows (CPU)". ggml's CPU_REPACK buffer gives each MLWQ weight this layout at load
// (mlwq-repack.cpp): a group of 8 rows keeps its 8*row_bytes bytes, holding per block j the 8 rows'
// scale codes and then their zero/width bytes (16*K bytes), then each block's codes (64*W bytes),
// plane by plane as in a row (greedy 4, 2, 1, low bits first). In a plane of p bits, 32-byte chunk m
// holds the column groups g = (8/p)*m + t at bits p*t..p*t+p-1 of byte 4r+k (row r, column 4g+k): a
// shift and a mask give group g with one code per byte and row r in int32 lane r, the panels'
// layout, with no transposition. Every row of a group has the same width at each block.
#if defined(MLWQ_AVX2) || defined(MLWQ_AVX512)
#define MLWQ_X8 1

#define MLWQ_UNROLL16 _Pragma("GCC unroll 16")

// width of block j of a group (its rows share it): the zero/width byte of row 0
MLWQ_INLINE int mlwq_x8_width(const uint8_t * xg, int j) {
    return (xg[16*j + 8] >> 5) + 1;
}

// group g (0..15) of a plane of p bits at c, moved to bits shift..shift+p-1
MLWQ_INLINE __m256i mlwq_x8_plane(const uint8_t * c, int p, int g, int shift) {
    const int per = 8/p;
    const int s   = p*(g % per) - shift;   // right shift that puts the field in place
    const __m256i v = _mm256_loadu_si256((const __m256i *) (c + 32*(g / per)));
    const __m256i f = s > 0 ? _mm256_srli_epi16(v, s) : s < 0 ? _mm256_slli_epi16(v, -s) : v;
    return _mm256_and_si256(f, _mm256_set1_epi8((char) (((1 << p) - 1) << shift)));
}

// the codes of group g of a block of width W at c: its planes (greedy 4, 2, 1, low bits first, as in
// a row) loaded by PLANE(c, p, g, shift) and joined by OR; one recipe for the 256-bit group and the
// 512-bit pair of groups of AVX-512
#define MLWQ_X8_GROUP(PLANE, OR)                                                                        \
    switch (W) {                                                                                        \
        case 1:  return PLANE(c, 1, g, 0);                                                              \
        case 2:  return PLANE(c, 2, g, 0);                                                              \
        case 3:  return OR(PLANE(c, 2, g, 0), PLANE(c + 128, 1, g, 2));                                 \
        case 4:  return PLANE(c, 4, g, 0);                                                              \
        case 5:  return OR(PLANE(c, 4, g, 0), PLANE(c + 256, 1, g, 4));                                 \
        case 6:  return OR(PLANE(c, 4, g, 0), PLANE(c + 256, 2, g, 4));                                 \
        case 7:  return OR(OR(PLANE(c, 4, g, 0), PLANE(c + 256, 2, g, 4)), PLANE(c + 384, 1, g, 6));    \
        default: return OR(PLANE(c, 4, g, 0), PLANE(c + 256, 4, g, 4));   /* 8 */                       \
    }

// (the AVX2 sums read width 8 as two 4-bit planes themselves)
MLWQ_INLINE __m256i mlwq_x8_group(const uint8_t * c, int W, int g) {
    MLWQ_X8_GROUP(mlwq_x8_plane, _mm256_or_si256)
}

// the 8 rows' scales d and zero points of block j (header bytes h: 8 scale codes, 8 zero/width bytes),
// d bit for bit ggml_mlwq_scale: mantissa times an exact power of two
MLWQ_INLINE void mlwq_x8_header(const uint8_t * h, __m256 * d, __m256 * z) {
    int64_t s8, z8;
    memcpy(&s8, h, 8);
    memcpy(&z8, h + 8, 8);
    const __m256i s = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(s8));
    const __m256  mant = _mm256_setr_ps(0x1.000000p+0f, 0x1.172b84p+0f, 0x1.306fe0p+0f, 0x1.4bfdaep+0f,
                                        0x1.6a09e6p+0f, 0x1.8ace54p+0f, 0x1.ae89fap+0f, 0x1.d5818ep+0f);
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_srli_epi32(s, 3), _mm256_set1_epi32(GGML_MLWQ_SCALE_EXP0 + 127)), 23);
    *d = _mm256_mul_ps(_mm256_permutevar8x32_ps(mant, s), _mm256_castsi256_ps(e));   // permutevar reads s & 7
    *z = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(z8)), _mm256_set1_epi32(GGML_MLWQ_ZERO_MAX)));
}

#if defined(MLWQ_AVX2)
// int32 sums over half h of block (width W, codes c) against one column's q8_1 block yb, row r in lane r.
// Products of groups add up in int16 while they cannot overflow (n groups of pairs <= 2*(2^W - 1)*127:
// all 8 for W <= 4, 4 for W = 5, 2 for W = 6, 1 for W = 7); width 8 as low nibbles plus 16 times high
// nibbles (its two 4-bit planes)
MLWQ_INLINE __m256i mlwq_x8_isum(const uint8_t * c, int W, int h, const block_q8_1 * yb) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int     n16  = W <= 4 ? 8 : W == 5 ? 4 : W == 6 ? 2 : 1;
    __m256i i = _mm256_setzero_si256();
    __m256i s = _mm256_setzero_si256();
    __m256i u = _mm256_setzero_si256();
    MLWQ_UNROLL8
    for (int g = 0; g < 8; ++g) {
        int32_t a;
        memcpy(&a, yb->qs + 4*g, sizeof(a));
        const __m256i y = _mm256_set1_epi32(a);
        if (W == 8) {
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(mlwq_x8_plane(c, 4, 8*h + g, 0), y));
            u = _mm256_add_epi16(u, _mm256_maddubs_epi16(mlwq_x8_plane(c + 256, 4, 8*h + g, 0), y));
            if (g % 4 == 3) {    // 4 groups of nibble products: 4*2*15*127 < 2^15
                i = _mm256_add_epi32(i, _mm256_add_epi32(_mm256_madd_epi16(s, ones), _mm256_madd_epi16(u, _mm256_set1_epi16(16))));
                s = u = _mm256_setzero_si256();
            }
            continue;
        }
        const __m256i p = _mm256_maddubs_epi16(mlwq_x8_group(c, W, 8*h + g), y);
        s = g % n16 == 0 ? p : _mm256_add_epi16(s, p);
        if (g % n16 == n16 - 1) {
            i = _mm256_add_epi32(i, _mm256_madd_epi16(s, ones));
        }
    }
    return i;
}

// half h of a block of width W against its q8_1 block: S - zero*sum(qy) (integers below 2^24, exact),
// then acc += f*(d*dy)
MLWQ_INLINE __m256 mlwq_x8_half(const uint8_t * c, int W, int h, __m256 d, __m256 z, const block_q8_1 * yb,
                                const mlwq_ycol * yj, __m256 acc) {
    const __m256i i = mlwq_x8_isum(c, W, h, yb + h);
    const __m256  f = _mm256_fnmadd_ps(z, _mm256_set1_ps(yj->sy[h]), _mm256_cvtepi32_ps(i));
    return _mm256_fmadd_ps(f, _mm256_mul_ps(d, _mm256_set1_ps(yj->dy[h])), acc);
}

// one block (width W, codes c, the 8 rows' scales d and zero points z) against one column (its q8_1
// blocks yb, their sums yj), added to acc (row r in lane r)
MLWQ_INLINE __m256 mlwq_x8_block(const uint8_t * c, int W, __m256 d, __m256 z, const block_q8_1 * yb,
                                 const mlwq_ycol * yj, __m256 acc) {
    // one branch on the width per block, both halves inside: shifts and masks are immediates
#define MLWQ_CASE(w) case w: return mlwq_x8_half(c, w, 1, d, z, yb, yj, mlwq_x8_half(c, w, 0, d, z, yb, yj, acc))
    switch (W) {
        MLWQ_CASE(1); MLWQ_CASE(2); MLWQ_CASE(3); MLWQ_CASE(4);
        MLWQ_CASE(5); MLWQ_CASE(6); MLWQ_CASE(7);
        default: MLWQ_CASE(8);
    }
#undef MLWQ_CASE
}

// a group decoded into a panel (prompts: the panel tile then serves every column); returns the
// widest width (8: not decoded, the panel tile cannot take it)
static int mlwq_x8_decode(int K, const uint8_t * xg, mlwq_pblock256 * P) {
    const uint8_t * c = xg + 16*(size_t) K;
    int wmax = 1;
    for (int j = 0; j < K; ++j) {
        mlwq_x8_header(xg + 16*j, &P[j].d, &P[j].z);
        P[j].live = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        P[j].dead = 0;
        const int W = mlwq_x8_width(xg, j);
        wmax = W > wmax ? W : wmax;
        switch (W) {
#define MLWQ_CASE(W) case W: MLWQ_UNROLL16 for (int g = 0; g < 16; ++g) { _mm256_store_si256(&P[j].q[g], mlwq_x8_group(c, W, g)); } break
            MLWQ_CASE(1); MLWQ_CASE(2); MLWQ_CASE(3); MLWQ_CASE(4);
            MLWQ_CASE(5); MLWQ_CASE(6); MLWQ_CASE(7);
            default: break;
#undef MLWQ_CASE
        }
        c += 64*(size_t) W;
    }
    return wmax;
}
#else
// AVX-512 VNNI: one 512-bit register holds a column group of both half blocks (half 0 in lanes 0-7,
// half 1 in lanes 8-15, row r in lanes r and 8 + r), so vpdpbusd takes 64 products of 8 rows, codes
// unsigned as in the panels. Each row's float steps are panel_tile512's, so generation and prompts
// give the same sums bit for bit.

// group g of both halves: chunk c + 32*(g/per) holds group g, the chunk p further on group g + 8
MLWQ_INLINE __m512i mlwq_x8_plane512(const uint8_t * c, int p, int g, int shift) {
    const int per = 8/p;
    const int s   = p*(g % per) - shift;
    const uint8_t * a = c + 32*(g / per);
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) a)),
                                         _mm256_loadu_si256((const __m256i *) (a + 32*p)), 1);
    const __m512i f = s > 0 ? _mm512_srli_epi16(v, s) : s < 0 ? _mm512_slli_epi16(v, -s) : v;
    return _mm512_and_si512(f, _mm512_set1_epi8((char) (((1 << p) - 1) << shift)));
}

MLWQ_INLINE __m512i mlwq_x8_group512(const uint8_t * c, int W, int g) {
    MLWQ_X8_GROUP(mlwq_x8_plane512, _mm512_or_si512)
}

// int32 sums of both halves of a block of width W against the activations a (both q8_1 blocks' codes)
MLWQ_INLINE __m512i mlwq_x8_isum512(const uint8_t * c, int W, __m512i a) {
    __m512i i = _mm512_setzero_si512();
    MLWQ_UNROLL8
    for (int g = 0; g < 8; ++g) {
        // dword g of each half, broadcast over its 8 lanes
        const __m512i y = _mm512_permutexvar_epi32(_mm512_set_epi32(8 + g, 8 + g, 8 + g, 8 + g, 8 + g, 8 + g, 8 + g, 8 + g,
                                                                    g, g, g, g, g, g, g, g), a);
        i = _mm512_dpbusd_epi32(i, mlwq_x8_group512(c, W, g), y);
    }
    return i;
}

// lo in lanes 0-7, hi in 8-15; and back (AVX512F alone: no AVX512DQ 32x8 inserts and extracts)
MLWQ_INLINE __m512 mlwq_ps512(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}
MLWQ_INLINE __m256 mlwq_hi_ps(__m512 v) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

// one block (width W, codes c, the 8 rows' scales d and zero points z) against one column (its q8_1
// blocks yb, their sums yj), added to acc (row r in lane r)
MLWQ_INLINE __m256 mlwq_x8_block(const uint8_t * c, int W, __m256 d, __m256 z, const block_q8_1 * yb,
                                 const mlwq_ycol * yj, __m256 acc) {
    const __m512i a = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) yb[0].qs)),
                                         _mm256_loadu_si256((const __m256i *) yb[1].qs), 1);
    __m512i i;
    switch (W) {   // a constant width in each case: shifts and masks are immediates
        case 1:  i = mlwq_x8_isum512(c, 1, a); break;
        case 2:  i = mlwq_x8_isum512(c, 2, a); break;
        case 3:  i = mlwq_x8_isum512(c, 3, a); break;
        case 4:  i = mlwq_x8_isum512(c, 4, a); break;
        case 5:  i = mlwq_x8_isum512(c, 5, a); break;
        case 6:  i = mlwq_x8_isum512(c, 6, a); break;
        case 7:  i = mlwq_x8_isum512(c, 7, a); break;
        default: i = mlwq_x8_isum512(c, 8, a); break;
    }
    // S - zero*sum(qy) per half (exact), then panel_tile512's t = f0*dy0 + f1*dy1 and acc += d*t
    const __m512 f = _mm512_fnmadd_ps(mlwq_ps512(z, z), mlwq_ps512(_mm256_set1_ps(yj->sy[0]), _mm256_set1_ps(yj->sy[1])),
                                      _mm512_cvtepi32_ps(i));
    __m256 t = _mm256_mul_ps(_mm512_castps512_ps256(f), _mm256_set1_ps(yj->dy[0]));
    t = _mm256_fmadd_ps(mlwq_hi_ps(f), _mm256_set1_ps(yj->dy[1]), t);
    return _mm256_fmadd_ps(d, t, acc);
}

// groups xa and xb (NULL: none, rows 8-15 add nothing) decoded into the 16-row panel of panel_tile512
static void mlwq_x8_decode512(int K, const uint8_t * xa, const uint8_t * xb, mlwq_pblock512 * P) {
    const uint8_t * ca = xa + 16*(size_t) K;
    const uint8_t * cb = xb ? xb + 16*(size_t) K : NULL;
    for (int j = 0; j < K; ++j) {
        __m256 da, za, db = _mm256_setzero_ps(), zb = _mm256_setzero_ps();
        mlwq_x8_header(xa + 16*j, &da, &za);
        const int wa = mlwq_x8_width(xa, j);
        const int wb = xb ? mlwq_x8_width(xb, j) : 0;
        if (xb) {
            mlwq_x8_header(xb + 16*j, &db, &zb);
        }
        for (int g = 0; g < 16; ++g) {
            const __m256i qa = mlwq_x8_group(ca, wa, g);
            const __m256i qb = xb ? mlwq_x8_group(cb, wb, g) : _mm256_setzero_si256();
            _mm512_store_si512(&P[j].q[g], _mm512_inserti64x4(_mm512_castsi256_si512(qa), qb, 1));
        }
        P[j].d    = mlwq_ps512(da, db);
        P[j].z    = mlwq_ps512(za, zb);
        P[j].live = (__mmask16) (xb ? 0xffff : 0x00ff);
        ca += 64*(size_t) wa;
        cb += xb ? 64*(size_t) wb : 0;
    }
}
#endif

// one group of 8 rows (at xg) against one column (q8_1 at y, its sums yc): s[r] for r < 8
MLWQ_INLINE void mlwq_x8_gemv(int K, const uint8_t * xg, const uint8_t * y, const mlwq_ycol * yc, float * s) {
    __m256 acc = _mm256_setzero_ps();
    const uint8_t * c = xg + 16*(size_t) K;
    for (int j = 0; j < K; ++j) {
        __m256 d, z;
        mlwq_x8_header(xg + 16*j, &d, &z);
        const int W = mlwq_x8_width(xg, j);
        acc = mlwq_x8_block(c, W, d, z, (const block_q8_1 *) y + 2*j, &yc[j], acc);
        c += 64*(size_t) W;
    }
    _mm256_storeu_ps(s, acc);
}
#endif

// ---- ARM NEON (AArch64) --------------------------------------------------------------------------
#if defined(MLWQ_NEON)
// the tile loops (NR, NC constants after inlining) must unroll completely, as on x86; clang (Android NDK,
// Apple) keeps a loop of 2 under "GCC unroll 4", so it is told to unroll fully
#if defined(__clang__)
#define MLWQ_NEON_UNROLL _Pragma("unroll")
#else
#define MLWQ_NEON_UNROLL MLWQ_UNROLL
#endif
// A block's 64 codes in four registers, columns 0-15, 16-31, 32-47, 48-63 (FORMAT.md, "Codes":
// 4-bit plane byte i = columns i | i+32, 2-bit plane byte i = columns i, i+16, i+32, i+48, 1-bit plane
// byte i = columns i, i+8, ..., i+56), already minus the zero point: a = q - zero in int8, exact for
// widths 1..7 (q and zero in 0..127). Width 8 gives q - 128 (the caller adds (128 - zero) * sum(qy)).
// Each width is straight-line code; the zero point is folded into the last step of each column group:
//   - a 1-bit plane on top of lower planes: cmtst on the complemented bytes gives -1 where the bit is
//     0, and sli(lower, that, s) = lower + 2^s*bit - 2^s (it also masks the lower field), so
//     a = sli(...) + (2^s - zero);
//   - the top field of a byte: usra (a = -zero + (v >> s)), no mask.

// 1-bit plane: the 8 bytes in both halves, lane l of group k tests bit 2k + (l >= 8) (column
// 16k + l is bit (16k + l)/8 of byte l % 8)
MLWQ_INLINE uint8x16_t mlwq_neon_p1(const uint8_t * c) {
    uint64_t v;
    memcpy(&v, c, sizeof(v));
    return vreinterpretq_u8_u64(vdupq_n_u64(v));
}
MLWQ_INLINE uint8x16_t mlwq_neon_bitsel(int k) {
    return vcombine_u8(vdup_n_u8((uint8_t) (1u << (2*k))), vdup_n_u8((uint8_t) (1u << (2*k + 1))));
}

// 64 int8 of a block (columns 0-15, 16-31, 32-47, 48-63) or of its activations, passed by value as the
// AVX2 code passes mlwq_q64
typedef struct { int8x16_t v[4]; } mlwq_neon_b64;

// codes - zero (widths 1..7) or codes - 128 (width 8) of the block whose planes start at c
MLWQ_INLINE mlwq_neon_b64 mlwq_neon_decode(const uint8_t * c, const int W, const int zero) {
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    const uint8x16_t m2 = vdupq_n_u8(0x03);
    const uint8x16_t nz = vdupq_n_u8((uint8_t) -zero);
    uint8x16_t q[4];
    switch (W) {
        case 1: {
            // cmtst gives -1 (= -q) where the bit is set: a = -zero - (-q)
            const uint8x16_t v = mlwq_neon_p1(c);
            for (int k = 0; k < 4; ++k) {
                q[k] = vsubq_u8(nz, vtstq_u8(v, mlwq_neon_bitsel(k)));
            }
        } break;
        case 2: {
            const uint8x16_t v = vld1q_u8(c);
            q[0] = vaddq_u8(vandq_u8(v, m2), nz);
            q[1] = vaddq_u8(vandq_u8(vshrq_n_u8(v, 2), m2), nz);
            q[2] = vaddq_u8(vandq_u8(vshrq_n_u8(v, 4), m2), nz);
            q[3] = vsraq_n_u8(nz, v, 6);
        } break;
        case 3: {
            const uint8x16_t v  = vld1q_u8(c);
            const uint8x16_t nb = vmvnq_u8(mlwq_neon_p1(c + 16));
            const uint8x16_t o  = vdupq_n_u8((uint8_t) (4 - zero));
            q[0] = vaddq_u8(vsliq_n_u8(v,              vtstq_u8(nb, mlwq_neon_bitsel(0)), 2), o);
            q[1] = vaddq_u8(vsliq_n_u8(vshrq_n_u8(v, 2), vtstq_u8(nb, mlwq_neon_bitsel(1)), 2), o);
            q[2] = vaddq_u8(vsliq_n_u8(vshrq_n_u8(v, 4), vtstq_u8(nb, mlwq_neon_bitsel(2)), 2), o);
            q[3] = vaddq_u8(vsliq_n_u8(vshrq_n_u8(v, 6), vtstq_u8(nb, mlwq_neon_bitsel(3)), 2), o);
        } break;
        case 4: {
            const uint8x16_t v0 = vld1q_u8(c), v1 = vld1q_u8(c + 16);
            q[0] = vaddq_u8(vandq_u8(v0, m4), nz);
            q[1] = vaddq_u8(vandq_u8(v1, m4), nz);
            q[2] = vsraq_n_u8(nz, v0, 4);
            q[3] = vsraq_n_u8(nz, v1, 4);
        } break;
        case 5: {
            const uint8x16_t v0 = vld1q_u8(c), v1 = vld1q_u8(c + 16);
            const uint8x16_t nb = vmvnq_u8(mlwq_neon_p1(c + 32));
            const uint8x16_t o  = vdupq_n_u8((uint8_t) (16 - zero));
            q[0] = vaddq_u8(vsliq_n_u8(v0,               vtstq_u8(nb, mlwq_neon_bitsel(0)), 4), o);
            q[1] = vaddq_u8(vsliq_n_u8(v1,               vtstq_u8(nb, mlwq_neon_bitsel(1)), 4), o);
            q[2] = vaddq_u8(vsliq_n_u8(vshrq_n_u8(v0, 4), vtstq_u8(nb, mlwq_neon_bitsel(2)), 4), o);
            q[3] = vaddq_u8(vsliq_n_u8(vshrq_n_u8(v1, 4), vtstq_u8(nb, mlwq_neon_bitsel(3)), 4), o);
        } break;
        case 6:
        case 7: {
            // 4-bit plane | 2-bit plane << 4 (sli keeps the low nibble), then for 7 the 1-bit plane at 6
            const uint8x16_t v0 = vld1q_u8(c), v1 = vld1q_u8(c + 16), v2 = vld1q_u8(c + 32);
            q[0] = vsliq_n_u8(v0,               vandq_u8(v2, m2), 4);
            q[1] = vsliq_n_u8(v1,               vandq_u8(vshrq_n_u8(v2, 2), m2), 4);
            q[2] = vsliq_n_u8(vshrq_n_u8(v0, 4), vandq_u8(vshrq_n_u8(v2, 4), m2), 4);
            q[3] = vsliq_n_u8(vshrq_n_u8(v1, 4), vshrq_n_u8(v2, 6), 4);
            if (W == 6) {
                for (int k = 0; k < 4; ++k) {
                    q[k] = vaddq_u8(q[k], nz);
                }
            } else {
                const uint8x16_t nb = vmvnq_u8(mlwq_neon_p1(c + 48));
                const uint8x16_t o  = vdupq_n_u8((uint8_t) (64 - zero));
                for (int k = 0; k < 4; ++k) {
                    q[k] = vaddq_u8(vsliq_n_u8(q[k], vtstq_u8(nb, mlwq_neon_bitsel(k)), 6), o);
                }
            }
        } break;
        default: {
            // 8: low nibbles | high nibbles << 4 (sli/sri keep the other half of the byte), then q - 128
            const uint8x16_t v0 = vld1q_u8(c),      v1 = vld1q_u8(c + 16);
            const uint8x16_t h0 = vld1q_u8(c + 32), h1 = vld1q_u8(c + 48);
            const uint8x16_t s  = vdupq_n_u8(0x80);
            q[0] = veorq_u8(vsliq_n_u8(v0, h0, 4), s);
            q[1] = veorq_u8(vsliq_n_u8(v1, h1, 4), s);
            q[2] = veorq_u8(vsriq_n_u8(h0, v0, 4), s);
            q[3] = veorq_u8(vsriq_n_u8(h1, v1, 4), s);
        } break;
    }
    mlwq_neon_b64 a;
    for (int k = 0; k < 4; ++k) {
        a.v[k] = vreinterpretq_s8_u8(q[k]);
    }
    return a;
}

// int32 sums of a*qy of a block (W its width): lanes 0-1 add up to columns 0..31 (the first q8_1 block),
// lanes 2-3 to columns 32..63. Exact: |qy| <= 127 (ggml's q8_1 never writes -128) and |a| <= 2^W - 1
// (q and zero in 0..2^W - 1; width 8: q - 128, |a| <= 128), so no int16 sum below wraps.
//   dotprod (ARMv8.2+): vdotq_s32, 4 products a lane, then pairs of lanes;
//   plain NEON (ARMv8.0): int16 products (smull/smlal), as many per int16 lane as fit, then widened:
//   widths <= 5: 8 products a lane (8*31*127 < 2^15); 6: 4 (4*63*127 < 2^15); 7, 8: 2 (2*128*127 < 2^15).
// (A zero point out of range, which the loader refuses, may wrap: that block's value is unspecified.)
MLWQ_INLINE int32x4_t mlwq_neon_dot64(const int W, const mlwq_neon_b64 A, const mlwq_neon_b64 Y) {
    const int8x16_t * a = A.v;
    const int8x16_t * y = Y.v;
#if defined(__ARM_FEATURE_DOTPROD)
    GGML_UNUSED(W);
    const int32x4_t i0 = ggml_vdotq_s32(ggml_vdotq_s32(vdupq_n_s32(0), a[0], y[0]), a[1], y[1]);
    const int32x4_t i1 = ggml_vdotq_s32(ggml_vdotq_s32(vdupq_n_s32(0), a[2], y[2]), a[3], y[3]);
    return vpaddq_s32(i0, i1);
#else
    if (W <= 6) {
        // per half: 4 products per int16 lane
        int16x8_t h0 = vmull_s8(vget_low_s8(a[0]), vget_low_s8(y[0]));
        h0 = vmlal_high_s8(h0, a[0], y[0]);
        h0 = vmlal_s8(h0, vget_low_s8(a[1]), vget_low_s8(y[1]));
        h0 = vmlal_high_s8(h0, a[1], y[1]);
        int16x8_t h1 = vmull_s8(vget_low_s8(a[2]), vget_low_s8(y[2]));
        h1 = vmlal_high_s8(h1, a[2], y[2]);
        h1 = vmlal_s8(h1, vget_low_s8(a[3]), vget_low_s8(y[3]));
        h1 = vmlal_high_s8(h1, a[3], y[3]);
        if (W <= 5) {
            return vpaddlq_s16(vpaddq_s16(h0, h1));             // 8 products per int16 lane
        }
        return vpaddq_s32(vpaddlq_s16(h0), vpaddlq_s16(h1));
    }
    // 2 products per int16 lane
    const int16x8_t l0 = vmlal_s8(vmull_s8(vget_low_s8(a[0]), vget_low_s8(y[0])), vget_low_s8(a[1]), vget_low_s8(y[1]));
    const int16x8_t u0 = vmlal_high_s8(vmull_high_s8(a[0], y[0]), a[1], y[1]);
    const int16x8_t l1 = vmlal_s8(vmull_s8(vget_low_s8(a[2]), vget_low_s8(y[2])), vget_low_s8(a[3]), vget_low_s8(y[3]));
    const int16x8_t u1 = vmlal_high_s8(vmull_high_s8(a[2], y[2]), a[3], y[3]);
    return vpaddq_s32(vpadalq_s16(vpaddlq_s16(l0), u0), vpadalq_s16(vpaddlq_s16(l1), u1));
#endif
}

// activations of block j of one column: 64 int8 (two q8_1 blocks) and their scales {dy0, dy0, dy1, dy1}
typedef struct {
    mlwq_neon_b64 q;
    float32x4_t   d;
} mlwq_neon_y;

MLWQ_INLINE mlwq_neon_y mlwq_neon_load_y(const block_q8_1 * y0) {
    mlwq_neon_y r;
    r.q.v[0] = vld1q_s8(y0[0].qs);
    r.q.v[1] = vld1q_s8(y0[0].qs + 16);
    r.q.v[2] = vld1q_s8(y0[1].qs);
    r.q.v[3] = vld1q_s8(y0[1].qs + 16);
    // the two fp16 scales as {d0, d0, d1, d1} in one 64-bit word, one fcvtl (exact, as the scalar path)
    uint16_t d0, d1;
    memcpy(&d0, &y0[0].d, sizeof(d0));
    memcpy(&d1, &y0[1].d, sizeof(d1));
    const uint64_t d01 = (uint64_t) d0 | (uint64_t) d1 << 32;
    r.d = vcvt_f32_f16(vreinterpret_f16_u64(vcreate_u64(d01 | d01 << 16)));
    return r;
}

MLWQ_INLINE float mlwq_neon_d(const uint8_t * h) {
    return ggml_mlwq_hdr_scale(h);
}

// exact int32 sums of (q - zero)*qy of a block (a from mlwq_neon_decode, width W) against one column
MLWQ_INLINE int32x4_t mlwq_neon_isum(const mlwq_neon_b64 a, const mlwq_neon_y y, const int W, const int zero) {
    int32x4_t i = mlwq_neon_dot64(W, a, y.q);
    if (W == 8) {
        // a = q - 128: add (128 - zero) * sum(qy), exact in int32
        const mlwq_neon_b64 one = { { vdupq_n_s8(1), vdupq_n_s8(1), vdupq_n_s8(1), vdupq_n_s8(1) } };
        i = vmlaq_n_s32(i, mlwq_neon_dot64(1, one, y.q), 128 - zero);
    }
    return i;
}

// Software pipelining (MLWQ_NEON_PIPE, 1 row x 1 column on plain NEON): a block's int32 sums and scales
// wait one block before their convert + fma, so that this tail (~20 cycles of latency) overlaps the next
// block's decoding instead of holding the in-order retirement (llvm-mca, Cortex-A72 model, width 3:
// 27.5 -> 25.1 cycles a block). The float additions happen in the same order either way. No gain on
// dotprod cores (Neoverse-N1 model: a loss) nor in larger tiles (registers).
#if defined(__ARM_FEATURE_DOTPROD)
#define MLWQ_NEON_PIPE(NR, NC) false
#else
#define MLWQ_NEON_PIPE(NR, NC) ((NR) == 1 && (NC) == 1)
#endif

// Block j (width W) of the NR rows x + r*bx (codes at off[r], advanced) against the NC columns yv[c]:
// each row decoded once, then its NC products into acc[r][c] (float32x4_t), with pipe (then NR = NC = 1)
// through pend_i / pend_s. A macro, as MLWQ_ROW_BLOCK of the AVX-512 tile, so that
// ggml_patch/tools/arm_mca_kernels.c can build the same loop around it for one width.
#define MLWQ_NEON_ROWS(W, NR, NC, x, bx, j, off, yv, acc, pipe, pend_i, pend_s)                            \
    do {                                                                                                  \
        MLWQ_NEON_UNROLL                                                                                  \
        for (int r_ = 0; r_ < (NR); ++r_) {                                                               \
            const uint8_t *     h_ = (x) + r_*(bx) + GGML_MLWQ_HEADER_SIZE*(j);                                               \
            const mlwq_neon_b64 a_ = mlwq_neon_decode((x) + r_*(bx) + (off)[r_], (W), ggml_mlwq_hdr_zero(h_));             \
            const float         d_ = mlwq_neon_d(h_);                                                     \
            (off)[r_] += 8*(size_t) (W);                                                                  \
            MLWQ_NEON_UNROLL                                                                              \
            for (int c_ = 0; c_ < (NC); ++c_) {                                                           \
                const int32x4_t   i_ = mlwq_neon_isum(a_, (yv)[c_], (W), ggml_mlwq_hdr_zero(h_));                          \
                const float32x4_t s_ = vmulq_n_f32((yv)[c_].d, d_);                                      \
                if (pipe) {                                                                               \
                    (acc)[r_][c_] = vfmaq_f32((acc)[r_][c_], vcvtq_f32_s32(pend_i), pend_s);              \
                    (pend_i) = i_;                                                                        \
                    (pend_s) = s_;                                                                        \
                } else {                                                                                  \
                    (acc)[r_][c_] = vfmaq_f32((acc)[r_][c_], vcvtq_f32_s32(i_), s_); /* |i_| < 2^24 */    \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    } while (0)

// same contract as mlwq_tile_avx512: NR rows x NC columns, the activations of a block shared by the
// rows, a decoded block by the columns; one branch on the width for all rows when they agree
MLWQ_INLINE void mlwq_tile_neon(int K, int b, float * s, size_t bs, const uint8_t * x, size_t bx,
                                const uint8_t * y, size_t by, const int NR, const int NC) {
    const size_t row_bytes = ggml_mlwq_row_bytes(K, b);
    const bool pipe = MLWQ_NEON_PIPE(NR, NC);
    int nb[MLWQ_MR];
    size_t off[MLWQ_MR];
    float32x4_t acc[MLWQ_MR][MLWQ_NC];
    int32x4_t   pend_i = vdupq_n_s32(0);
    float32x4_t pend_s = vdupq_n_f32(0.0f);
    for (int r = 0; r < NR; ++r) {
        nb[r]  = K;
        off[r] = (size_t) K * GGML_MLWQ_HEADER_SIZE;
        for (int c = 0; c < NC; ++c) {
            acc[r][c] = vdupq_n_f32(0.0f);
        }
    }
    for (int j = 0; j < K; ++j) {
        mlwq_neon_y yv[MLWQ_NC];
        MLWQ_NEON_UNROLL
        for (int c = 0; c < NC; ++c) {
            yv[c] = mlwq_neon_load_y((const block_q8_1 *) (y + c*by) + 2*j);
        }
        const int w0 = ggml_mlwq_hdr_bits(x + GGML_MLWQ_HEADER_SIZE*j);
        bool uniform = true;
        MLWQ_NEON_UNROLL
        for (int r = 0; r < NR; ++r) {
            uniform = uniform && j < nb[r] && ggml_mlwq_hdr_bits(x + r*bx + GGML_MLWQ_HEADER_SIZE*j) == w0 && ggml_mlwq_block_readable(w0, off[r], row_bytes);
        }
        if (uniform) {
            switch (w0) {
#define MLWQ_CASE(W) case W: MLWQ_NEON_ROWS(W, NR, NC, x, bx, j, off, yv, acc, pipe, pend_i, pend_s); break
                MLWQ_CASE(1); MLWQ_CASE(2); MLWQ_CASE(3); MLWQ_CASE(4);
                MLWQ_CASE(5); MLWQ_CASE(6); MLWQ_CASE(7);
                default: MLWQ_NEON_ROWS(8, NR, NC, x, bx, j, off, yv, acc, pipe, pend_i, pend_s); break;
#undef MLWQ_CASE
            }
            continue;
        }
        // rows of different widths at this block, or a corrupt header: row by row
        MLWQ_NEON_UNROLL
        for (int r = 0; r < NR; ++r) {
            const int w = ggml_mlwq_hdr_bits(x + r*bx + GGML_MLWQ_HEADER_SIZE*j);
            if (j >= nb[r]) {
                continue;
            }
            if (!ggml_mlwq_block_readable(w, off[r], row_bytes)) {
                nb[r] = j;
                continue;
            }
            switch (w) {
#define MLWQ_CASE(W) case W: MLWQ_NEON_ROWS(W, 1, NC, x + r*bx, 0, j, off + r, yv, acc + r, pipe, pend_i, pend_s); break
                MLWQ_CASE(1); MLWQ_CASE(2); MLWQ_CASE(3); MLWQ_CASE(4);
                MLWQ_CASE(5); MLWQ_CASE(6); MLWQ_CASE(7);
                default: MLWQ_NEON_ROWS(8, 1, NC, x + r*bx, 0, j, off + r, yv, acc + r, pipe, pend_i, pend_s); break;
#undef MLWQ_CASE
            }
        }
    }
    if (pipe) {
        acc[0][0] = vfmaq_f32(acc[0][0], vcvtq_f32_s32(pend_i), pend_s);
    }
    for (int r = 0; r < NR; ++r) {
        for (int c = 0; c < NC; ++c) {
            s[c*bs + r] = vaddvq_f32(acc[r][c]);
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
#if defined(MLWQ_AVX512) || defined(MLWQ_AVX2) || defined(MLWQ_NEON)
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

const char * ggml_mlwq_cpu_kernel(void) {
#if defined(MLWQ_AVX512)
    return "avx512-vnni";
#elif defined(MLWQ_AVX2) && defined(__AVXVNNI__)
    return "avx2-vnni";
#elif defined(MLWQ_AVX2)
    return "avx2";
#elif defined(MLWQ_NEON) && defined(__ARM_FEATURE_DOTPROD)
    return "neon-dotprod";
#elif defined(MLWQ_NEON)
    return "neon";
#else
    return "scalar";
#endif
}

#define MLWQ_VEC_DOT(B) \
void ggml_vec_dot_mlwq##B##_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, \
                                 const void * GGML_RESTRICT vy, size_t by, int nrc) { \
    mlwq_vec_dot(n, s, bs, vx, bx, vy, by, nrc, B); \
}
MLWQ_VEC_DOT(2)
MLWQ_VEC_DOT(3)
MLWQ_VEC_DOT(4)

#if defined(MLWQ_AVX512) || defined(MLWQ_AVX2) || defined(MLWQ_NEON)
// rows r0..r1-1 (r0 a multiple of MLWQ_MR) by MLWQ_MR x MLWQ_NC tiles, every column
static void mlwq_gemm_tiles(int64_t r0, int64_t r1, int64_t n, int K, int b, const uint8_t * x, size_t bx,
                            const uint8_t * y, size_t by, float * s, int64_t ldc) {
    for (int64_t r = r0; r < r1; r += MLWQ_MR) {
        const uint8_t * xr = x + r*bx;
        int64_t c = 0;
        // generation streams the weights once from memory: ask for the tile after next now (a tile
        // takes about one memory latency to compute). Prefetches never fault past the tensor.
        for (size_t p = 0; p < MLWQ_MR*bx; p += 64) {
#if defined(MLWQ_NEON)
            __builtin_prefetch(xr + 2*MLWQ_MR*bx + p, 0, 3);
#else
            _mm_prefetch((const char *) xr + 2*MLWQ_MR*bx + p, _MM_HINT_T0);
#endif
        }
        if (r + MLWQ_MR <= r1) {
            for (; c + MLWQ_NC <= n; c += MLWQ_NC) {
                mlwq_tile(K, b, s + c*ldc + r, (size_t) ldc, xr, bx, y + c*by, by, MLWQ_MR, MLWQ_NC);
            }
            for (; c < n; ++c) {
                mlwq_tile(K, b, s + c*ldc + r, (size_t) ldc, xr, bx, y + c*by, by, MLWQ_MR, 1);
            }
        } else {
            for (int64_t rr = r; rr < r1; ++rr) {
                for (c = 0; c + MLWQ_NC <= n; c += MLWQ_NC) {
                    mlwq_tile(K, b, s + c*ldc + rr, (size_t) ldc, x + rr*bx, bx, y + c*by, by, 1, MLWQ_NC);
                }
                for (; c < n; ++c) {
                    mlwq_tile(K, b, s + c*ldc + rr, (size_t) ldc, x + rr*bx, bx, y + c*by, by, 1, 1);
                }
            }
        }
    }
}
#endif

#if defined(MLWQ_PANEL)
#if defined(MLWQ_AVX512)
#define MLWQ_PR 16
typedef mlwq_pblock512 mlwq_pblock;
#else
#define MLWQ_PR 8
typedef mlwq_pblock256 mlwq_pblock;
#endif

// the nr rows of panel P (widest width wmax) against the n columns: tiles of MLWQ_PNC columns, then
// single ones
MLWQ_INLINE void mlwq_panel_cols(int K, const mlwq_pblock * P, int wmax, int64_t n, const uint8_t * y, size_t by,
                                 const mlwq_ycol * yc, float * s, int64_t ldc, int nr) {
    int64_t c = 0;
#if defined(MLWQ_AVX512)
    GGML_UNUSED(wmax);
    for (; c + MLWQ_PNC <= n; c += MLWQ_PNC) {
        mlwq_panel_tile512(K, P, y + c*by, by, yc + c*K, s + c*ldc, (size_t) ldc, nr, MLWQ_PNC);
    }
    for (; c < n; ++c) {
        mlwq_panel_tile512(K, P, y + c*by, by, yc + c*K, s + c*ldc, (size_t) ldc, nr, 1);
    }
#else
    const bool pair = wmax <= 6;   // two product pairs summed in int16 (mlwq_panel_tile256)
    for (; c + MLWQ_PNC <= n; c += MLWQ_PNC) {
        if (pair) {
            mlwq_panel_tile256(K, P, y + c*by, by, yc + c*K, s + c*ldc, (size_t) ldc, nr, MLWQ_PNC, true);
        } else {
            mlwq_panel_tile256(K, P, y + c*by, by, yc + c*K, s + c*ldc, (size_t) ldc, nr, MLWQ_PNC, false);
        }
    }
    for (; c < n; ++c) {
        if (pair) {
            mlwq_panel_tile256(K, P, y + c*by, by, yc + c*K, s + c*ldc, (size_t) ldc, nr, 1, true);
        } else {
            mlwq_panel_tile256(K, P, y + c*by, by, yc + c*K, s + c*ldc, (size_t) ldc, nr, 1, false);
        }
    }
#endif
}

// this thread's share of the panels of MLWQ_PR rows, every column; the rows of a panel that cannot take
// it (no scratch; on AVX2 a width-8 block) go through the tiles
static void mlwq_gemm_panels(int ith, int nth, int64_t m, int64_t n, int K, int b, const uint8_t * x, size_t bx,
                             const uint8_t * y, size_t by, float * s, int64_t ldc) {
    const int64_t npanels = (m + MLWQ_PR - 1) / MLWQ_PR;
    const int64_t p0 = npanels * ith / nth;
    const int64_t p1 = npanels * (ith + 1) / nth;
    if (p0 >= p1) {
        return;
    }
    uint8_t * buf = (uint8_t *) mlwq_scratch((size_t) K * sizeof(mlwq_pblock) + (size_t) (n * K) * sizeof(mlwq_ycol));
    if (!buf) {
        mlwq_gemm_tiles(p0*MLWQ_PR, p1*MLWQ_PR < m ? p1*MLWQ_PR : m, n, K, b, x, bx, y, by, s, ldc);
        return;
    }
    mlwq_pblock * P  = (mlwq_pblock *) buf;
    mlwq_ycol   * yc = (mlwq_ycol *) (buf + (size_t) K * sizeof(mlwq_pblock));
    mlwq_ycols(K, n, y, by, yc);
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t r  = p*MLWQ_PR;
        const int     nr = (int) (m - r < MLWQ_PR ? m - r : MLWQ_PR);
#if defined(MLWQ_AVX512)
        mlwq_panel_decode512(K, b, x + r*bx, bx, nr, P);
        const int wmax = 8;   // the AVX-512 panel takes every width
#else
        const int wmax = mlwq_panel_decode256(K, b, x + r*bx, bx, nr, P);
        if (wmax > 7) {
            mlwq_gemm_tiles(r, r + nr, n, K, b, x, bx, y, by, s, ldc);
            continue;
        }
#endif
        mlwq_panel_cols(K, P, wmax, n, y, by, yc, s + r, ldc, nr);
    }
}
#endif

bool ggml_mlwq_gemm(int ith, int nth, int64_t m, int64_t n, int64_t k, const void * A, int64_t lda,
                    const void * B, int64_t ldb, void * C, int64_t ldc, int Atype, int Btype, int Ctype) {
#if defined(MLWQ_AVX512) || defined(MLWQ_AVX2) || defined(MLWQ_NEON)
    const int b = ggml_mlwq_type_width((enum ggml_type) Atype);
    if (b == 0 || Btype != GGML_TYPE_Q8_1 || Ctype != GGML_TYPE_F32) {
        return false;   // src1 not yet quantized (mul_mat asks first with F32): after the conversion
    }
    const size_t bx = ggml_mlwq_row_bytes(lda, b);
    const size_t by = (size_t) ldb * sizeof(block_q8_1);
#if defined(MLWQ_PANEL)
    if (n >= MLWQ_PANEL_MIN_N) {
        mlwq_gemm_panels(ith, nth, m, n, (int) k, b, (const uint8_t *) A, bx, (const uint8_t *) B, by, (float *) C, ldc);
        return true;
    }
#endif
    // this thread's rows: a contiguous share of the MLWQ_MR-row tiles
    const int64_t ntiles = (m + MLWQ_MR - 1) / MLWQ_MR;
    const int64_t r0 = MLWQ_MR * (ntiles * ith / nth);
    const int64_t r1 = MLWQ_MR * (ntiles * (ith + 1) / nth) < m ? MLWQ_MR * (ntiles * (ith + 1) / nth) : m;
    mlwq_gemm_tiles(r0, r1, n, (int) k, b, (const uint8_t *) A, bx, (const uint8_t *) B, by, (float *) C, ldc);
    return true;
#else
    GGML_UNUSED(ith); GGML_UNUSED(nth); GGML_UNUSED(m); GGML_UNUSED(n); GGML_UNUSED(k); GGML_UNUSED(A);
    GGML_UNUSED(lda); GGML_UNUSED(B); GGML_UNUSED(ldb); GGML_UNUSED(C); GGML_UNUSED(ldc);
    GGML_UNUSED(Atype); GGML_UNUSED(Btype); GGML_UNUSED(Ctype);
    return false;       // portable build: ggml's vec_dot loop
#endif
}

bool ggml_mlwq_x8_available(void) {
#if defined(MLWQ_X8)
    return true;
#else
    return false;
#endif
}

// one plane of p bits (1, 2 or 4) of a block of 8 rows into its 2p chunks of 32 bytes (FORMAT.md,
// "Repacked rows"), four columns at a time in 32-bit words (little-endian: the x86 builds that use
// the layout): rp[r] = row r's 8p plane bytes, where byte i holds column i + t*8p at bits t*p;
// chunk m holds column group g = (8/p)*m + t at bits t*p of byte 4r+k (column 4g+k), so its word r
// takes from row word 4g mod 8p the field at bits p*(4g div 8p) of each byte
MLWQ_INLINE void mlwq_x8_pack_plane(const uint8_t * const rp[8], const int p, uint8_t * GGML_RESTRICT out) {
    const int      nb   = 8*p, per = 8/p;
    const uint32_t mask = ((1u << p) - 1)*0x01010101u;
    for (int r = 0; r < 8; ++r) {
        uint32_t w[8];
        memcpy(w, rp[r], nb);
        for (int m = 0; m < 2*p; ++m) {
            uint32_t v = 0;
            for (int t = 0; t < per; ++t) {
                const int c = 4*(per*m + t);    // the group's first column
                v |= ((w[(c % nb)/4] >> (p*(c/nb))) & mask) << (p*t);
            }
            memcpy(out + 32*m + 4*r, &v, sizeof(v));
        }
    }
}

bool ggml_mlwq_x8_pack(int b, int64_t ne0, int64_t nrows, const void * src, void * dst) {
    const int     K  = (int) (ne0 / QK_MLWQ);
    const size_t  rb = ggml_mlwq_row_bytes(K, b);
    const uint8_t * x = (const uint8_t *) src;
    if (nrows % 8 != 0 || ne0 % QK_MLWQ != 0) {
        return false;
    }
    // first the whole tensor: every group's rows share each block's width, every block is readable
    for (int64_t g = 0; g < nrows/8; ++g) {
        const uint8_t * xg = x + (size_t) g*8*rb;
        size_t off = (size_t) K * GGML_MLWQ_HEADER_SIZE;
        for (int j = 0; j < K; ++j) {
            const int w = ggml_mlwq_hdr_bits(xg + GGML_MLWQ_HEADER_SIZE*j);
            for (int r = 1; r < 8; ++r) {
                if (ggml_mlwq_hdr_bits(xg + r*rb + GGML_MLWQ_HEADER_SIZE*j) != w) {
                    return false;
                }
            }
            if (!ggml_mlwq_block_readable(w, off, rb)) {
                return false;
            }
            off += 8*(size_t) w;
        }
    }
    uint8_t * o = (uint8_t *) dst;
    memset(o, 0, (size_t) nrows * rb);
    for (int64_t g = 0; g < nrows/8; ++g) {
        const uint8_t * xg = x + (size_t) g*8*rb;
        uint8_t       * og = o + (size_t) g*8*rb;
        uint8_t       * oc = og + 16*(size_t) K;
        size_t off = (size_t) K * GGML_MLWQ_HEADER_SIZE;
        for (int j = 0; j < K; ++j) {
            const int w = ggml_mlwq_hdr_bits(xg + GGML_MLWQ_HEADER_SIZE*j);
            const uint8_t * rp[8];      // each row's next plane
            for (int r = 0; r < 8; ++r) {
                og[16*j + r]     = xg[r*rb + GGML_MLWQ_HEADER_SIZE*j];
                og[16*j + 8 + r] = xg[r*rb + GGML_MLWQ_HEADER_SIZE*j + 1];
                rp[r] = xg + r*rb + off;
            }
            int planes[3];
            const int np = ggml_mlwq_planes(w, planes);
            for (int ip = 0; ip < np; ++ip) {
                switch (planes[ip]) {   // a constant width in each case: the loops unroll
                    case 4:  mlwq_x8_pack_plane(rp, 4, oc); break;
                    case 2:  mlwq_x8_pack_plane(rp, 2, oc); break;
                    default: mlwq_x8_pack_plane(rp, 1, oc); break;
                }
                for (int r = 0; r < 8; ++r) {
                    rp[r] += 8*planes[ip];
                }
                oc += 64*planes[ip];
            }
            off += 8*(size_t) w;
        }
    }
    return true;
}

void ggml_mlwq_x8_gemm(int ith, int nth, int b, int64_t m, int64_t n, int64_t k, const void * A,
                       const void * B, int64_t ldb, float * C, int64_t ldc) {
#if defined(MLWQ_X8)
    const int     K  = (int) k;
    const size_t  gb = 8*ggml_mlwq_row_bytes(K, b);
    const size_t  by = (size_t) ldb * sizeof(block_q8_1);
    const int64_t G  = m / 8;
    // the thread's share of the groups, or on AVX-512 of prompts' panels of two groups
#if defined(MLWQ_AVX512)
    const int64_t per = n > 1 ? 2 : 1;
#else
    const int64_t per = 1;
#endif
    const int64_t U  = (G + per - 1) / per;
    const int64_t g0 = U * ith / nth;
    const int64_t g1 = U * (ith + 1) / nth;
    if (g0 >= g1) {
        return;
    }
    const uint8_t * x = (const uint8_t *) A;
    const uint8_t * y = (const uint8_t *) B;
    // the thread's scratch: a decoded panel (prompts), then the columns' scales and sums
    const size_t pbytes = n > 1 ? (size_t) K * sizeof(mlwq_pblock) : 0;
    uint8_t * buf = (uint8_t *) mlwq_scratch(pbytes + (size_t) (n * K) * sizeof(mlwq_ycol));
    GGML_ASSERT(buf != NULL);
    mlwq_pblock * P  = (mlwq_pblock *) buf;
    mlwq_ycol   * yc = (mlwq_ycol *) (buf + pbytes);
    mlwq_ycols(K, n, y, by, yc);
    if (n == 1) {
        for (int64_t g = g0; g < g1; ++g) {
            const uint8_t * xg = x + (size_t) g*gb;
            // generation streams the weights once from memory: ask for the group after next now
            for (size_t p = 0; p < gb; p += 64) {
                _mm_prefetch((const char *) xg + 2*gb + p, _MM_HINT_T0);
            }
            mlwq_x8_gemv(K, xg, y, yc, C + 8*g);
        }
        return;
    }
#if defined(MLWQ_AVX512)
    for (int64_t q = g0; q < g1; ++q) {   // panels: groups 2q and 2q + 1
        const uint8_t * xa = x + (size_t) (2*q)*gb;
        const bool two = 2*q + 1 < G;
        mlwq_x8_decode512(K, xa, two ? xa + gb : NULL, P);
        mlwq_panel_cols(K, P, 8, n, y, by, yc, C + 16*q, ldc, two ? 16 : 8);
    }
#else
    for (int64_t g = g0; g < g1; ++g) {
        const uint8_t * xg = x + (size_t) g*gb;
        float * s = C + 8*g;
        const int wmax = mlwq_x8_decode(K, xg, P);
        if (wmax > 7) {   // the panel tile cannot take width 8: generation's kernel, column by column
            for (int64_t c = 0; c < n; ++c) {
                mlwq_x8_gemv(K, xg, y + c*by, yc + c*K, s + c*ldc);
            }
            continue;
        }
        mlwq_panel_cols(K, P, wmax, n, y, by, yc, s, ldc, 8);
    }
#endif
#else
    GGML_UNUSED(ith); GGML_UNUSED(nth); GGML_UNUSED(b); GGML_UNUSED(m); GGML_UNUSED(n); GGML_UNUSED(k);
    GGML_UNUSED(A); GGML_UNUSED(B); GGML_UNUSED(ldb); GGML_UNUSED(C); GGML_UNUSED(ldc);
    GGML_ABORT("MLWQ: repacked rows need the AVX2 or AVX-512 kernels");
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
