// MLWQ2/MLWQ3/MLWQ4 kernels: matrix-vector product against q8_1 activations, the permuted
// activations of an MLWQ product, dequantization for cuBLAS, get_rows. Byte format:
// ggml_patch/FORMAT.md. Design notes: ggml_patch/CUDA.md.
//
// Mat-vec: one lane per 64-column block, rounds of 32 consecutive blocks; a warp per row, or S = 2
// or 4 warps per row of several rounds, warp s taking rounds s, s+S, ... A block's code offset is
// 8 * (sum of the widths before it): an inclusive warp scan over the round's headers plus a carry
// (the widths of earlier rounds, from their headers alone). Lanes decode their blocks with the
// same instructions whatever the width (absent bit planes load nothing), because the 32 blocks of
// a round span several tiers and a switch on the width would run each width present in turn.
// Every code read is bounds-checked against the row's fixed code area (8*K*b bytes): as on the
// CPU, from the first block whose codes would end past the row, blocks read as 0.

#include "mlwq.cuh"
#include "unary.cuh"

#include "ggml-mlwq.h"

#define MLWQ_QK           QK_MLWQ                // 64 columns per block
#define MLWQ_HDR_BYTES    GGML_MLWQ_HEADER_SIZE  // u8 scale code | u8 (zero | (bits - 1) << 5)
#define MLWQ_WARPS        4                      // warps per CTA (mat-vec); rows per CTA in dequantization

static_assert(MLWQ_QK == 2*QK8_1, "an MLWQ block spans two q8_1 blocks");

static int mlwq_avg_bits(const ggml_type type) {
    const int b = ggml_mlwq_type_width(type);
    GGML_ASSERT(b > 0 && "not an MLWQ type");
    return b;
}

// ---------------------------------------------------------------------------------------------
// device helpers

// dot product of 4 unsigned bytes (codes, 0..255) with 4 signed bytes (q8_1), accumulated into c
static __device__ __forceinline__ int mlwq_dp4a_us(const uint32_t a, const int b, const int c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610 && !defined(GGML_USE_HIP) && !defined(GGML_USE_MUSA)
    int r;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
#else
    int r = c;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        r += (int) ((a >> (8*k)) & 0xFF) * (int) (int8_t) ((b >> (8*k)) & 0xFF);
    }
    return r;
#endif
}

// Code words, read as two 16-bit halves: a row is K*(2 + 8b) bytes, so with K odd every other
// row's code area is 2 but not 4-byte aligned.
struct mlwq_words {
    const uint16_t * p;
    __device__ __forceinline__ int operator[](const int i) const {
        return (int) ((uint32_t) p[2*i] | (uint32_t) p[2*i + 1] << 16);
    }
    __device__ __forceinline__ mlwq_words operator+(const int i) const { return { p + 2*i }; }
};

// A 64-column block is 16 groups of 4 columns; group g = columns 4g..4g+3, as 4 byte-codes in a
// word (low byte = lowest column).
// Group g in each plane (FORMAT.md's byte layouts, no shuffling):
//   4-bit plane (8 words): word g & 7, nibble g < 8 ? low : high
//   2-bit plane (4 words): word g & 3, bits 2*(g >> 2) of each byte
//   1-bit plane (2 words): word g & 1, bit g >> 1 of each byte

// planes of a width-W block (dequantization: one width per call), greedy: 4-bit planes while
// >= 4 remain, then a 2-bit, then a 1-bit
template <int W>
static __device__ __forceinline__ void mlwq_unpack(const mlwq_words p, uint32_t q[16]) {
    static_assert(W >= 1 && W <= 8, "MLWQ block width out of range");
    constexpr int n4 = W / 4;            // 0, 1 or 2 four-bit planes
    constexpr int o2 = 8*n4;             // int offset of the 2-bit plane
    constexpr int o1 = o2 + (W & 2 ? 4 : 0);
#pragma unroll
    for (int g = 0; g < 16; ++g) {
        uint32_t v = 0;
        if constexpr (n4 >= 1) { v |= ((uint32_t) p[g & 7] >> (g < 8 ? 0 : 4)) & 0x0F0F0F0Fu; }
        if constexpr (n4 >= 2) { v |= (((uint32_t) p[8 + (g & 7)] >> (g < 8 ? 0 : 4)) & 0x0F0F0F0Fu) << 4; }
        if constexpr (W & 2)   { v |= (((uint32_t) p[o2 + (g & 3)] >> (2*(g >> 2))) & 0x03030303u) << (4*n4); }
        if constexpr (W & 1)   { v |= (((uint32_t) p[o1 + (g & 1)] >> (g >> 1)) & 0x01010101u) << (4*n4 + (W & 2)); }
        q[g] = v;
    }
}

// unpack a block of runtime width w (1..8)
static __device__ __forceinline__ void mlwq_unpack_w(const int w, const mlwq_words p, uint32_t q[16]) {
    switch (w) {
        case 1:  mlwq_unpack<1>(p, q); break;
        case 2:  mlwq_unpack<2>(p, q); break;
        case 3:  mlwq_unpack<3>(p, q); break;
        case 4:  mlwq_unpack<4>(p, q); break;
        case 5:  mlwq_unpack<5>(p, q); break;
        case 6:  mlwq_unpack<6>(p, q); break;
        case 7:  mlwq_unpack<7>(p, q); break;
        default: mlwq_unpack<8>(p, q); break;
    }
}

// a block header h = byte 0 | byte 1 << 8 (ggml-mlwq.h): scale code, then zero | (bits - 1) << 5
static __device__ __forceinline__ int mlwq_hdr_bits(const uint32_t h) {
    return (int) ((h >> 13) & 7) + 1;
}

static __device__ __forceinline__ int mlwq_hdr_zero(const uint32_t h) {
    return (int) ((h >> 8) & GGML_MLWQ_ZERO_MAX);
}

// d = 2^(s/8 - 20), the same exact float32 product as ggml_mlwq_scale
static __device__ __forceinline__ float mlwq_hdr_d(const uint32_t h) {
    const int s = (int) (h & 0xFF);
    float m;
    switch (s & 7) {
        case 0:  m = 0x1.000000p+0f; break;
        case 1:  m = 0x1.172b84p+0f; break;
        case 2:  m = 0x1.306fe0p+0f; break;
        case 3:  m = 0x1.4bfdaep+0f; break;
        case 4:  m = 0x1.6a09e6p+0f; break;
        case 5:  m = 0x1.8ace54p+0f; break;
        case 6:  m = 0x1.ae89fap+0f; break;
        default: m = 0x1.d5818ep+0f; break;
    }
    return m * __int_as_float(((s >> 3) + GGML_MLWQ_SCALE_EXP0 + 127) << 23);
}

// Locate this lane's block (one lane per block) in a round: returns its width, or 0 if the block
// does not exist or must read as 0, and its byte offset in the code area; advances carry (a sum
// of widths) by the round's total. As on the CPU (ggml-mlwq.c), from the first corrupt header on
// (codes ending past the row) every block reads as 0: `dead` carries that
// across rounds. All lanes of the warp call it together.
static __device__ __forceinline__ int mlwq_locate(const uint32_t h, const bool exists, const int code_bytes,
                                                  int & carry, bool & dead, int & off) {
    const int  lane = threadIdx.x;
    const int  wraw = exists ? mlwq_hdr_bits(h) : 0;
    const bool wok  = wraw >= GGML_MLWQ_MIN_BITS && wraw <= GGML_MLWQ_MAX_BITS;
    const int  w    = exists && wok ? wraw : 0;
    int incl = w;
#pragma unroll
    for (int delta = 1; delta < WARP_SIZE; delta <<= 1) {
        const int t = __shfl_up_sync(0xFFFFFFFF, incl, delta, WARP_SIZE);
        if (lane >= delta) {
            incl += t;
        }
    }
    const int total = __shfl_sync(0xFFFFFFFF, incl, WARP_SIZE - 1, WARP_SIZE);
    off    = 8*(carry + incl - w);
    carry += total;
    const bool bad = exists && (!wok || off + 8*w > code_bytes);
    const uint32_t bad_mask = __ballot_sync(0xFFFFFFFF, bad);
    const bool ok = exists && !dead && (bad_mask & (0xFFFFFFFFu >> (WARP_SIZE - 1 - lane))) == 0;
    dead = dead || bad_mask != 0;
    return ok ? w : 0;
}


// ---------------------------------------------------------------------------------------------
// matrix-vector product

// The code words of one block for the width-generic decoder: a width w is w/4 four-bit planes,
// then a 2-bit plane if w & 2, then a 1-bit plane if w & 1. Planes the width lacks load nothing
// and stay 0, so every lane runs the same instructions whatever its block's width.
struct mlwq_block_words {
    int a[8];   // first 4-bit plane  (w >= 4)
    int b[8];   // second 4-bit plane (w == 8)
    int c[4];   // 2-bit plane        (w & 2)
    int d[2];   // 1-bit plane        (w & 1)
};

// w = 0 (no block, or a block that reads as 0) loads nothing
static __device__ __forceinline__ void mlwq_load_words(const mlwq_words p, const int w, mlwq_block_words & bw) {
    const int n4 = w >> 2;
    const mlwq_words pc = p + 8*n4;
    const mlwq_words pd = pc + ((w & 2) ? 4 : 0);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        bw.a[i] = n4 >= 1 ? p[i]     : 0;
        bw.b[i] = n4 >= 2 ? p[8 + i] : 0;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        bw.c[i] = (w & 2) ? pc[i] : 0;
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        bw.d[i] = (w & 1) ? pd[i] : 0;
    }
}

// Codes of the block, group g in q[g]. The any_* flags are warp-uniform (some lane of the warp has
// such a plane), so a plane no lane has costs nothing.
static __device__ __forceinline__ void mlwq_decode_words(const mlwq_block_words & bw, const int w,
        const bool any_a, const bool any_b, const bool any_c, const bool any_d, uint32_t q[16]) {
    const int sc = 4*(w >> 2);          // shift of the 2-bit plane's bits
    const int sd = sc + (w & 2);        // shift of the 1-bit plane's bit
#pragma unroll
    for (int g = 0; g < 16; ++g) {
        q[g] = 0;
    }
    if (any_a) {
#pragma unroll
        for (int g = 0; g < 16; ++g) {
            q[g] |= ((uint32_t) bw.a[g & 7] >> (g < 8 ? 0 : 4)) & 0x0F0F0F0Fu;
        }
    }
    if (any_b) {
#pragma unroll
        for (int g = 0; g < 16; ++g) {
            q[g] |= (((uint32_t) bw.b[g & 7] >> (g < 8 ? 0 : 4)) & 0x0F0F0F0Fu) << 4;
        }
    }
    if (any_c) {
#pragma unroll
        for (int g = 0; g < 16; ++g) {
            q[g] |= (((uint32_t) bw.c[g & 3] >> (2*(g >> 2))) & 0x03030303u) << sc;
        }
    }
    if (any_d) {
#pragma unroll
        for (int g = 0; g < 16; ++g) {
            q[g] |= (((uint32_t) bw.d[g & 1] >> (g >> 1)) & 0x01010101u) << sd;
        }
    }
}

// sum_i d*(q_i - zero)*y_i of one block against one q8_1 column (y: the block's 16 activation
// words, dy: the scales of its two q8_1 blocks), over the QUANTIZED activations as the CPU does:
// with q8_1's float sum ds.y (of the unquantized y) the zero-point term would not cancel the
// activation rounding carried by the uncentred codes (measured: mean KLD 0.028 against the CPU on
// SmolLM2, vs 0.005 for cuBLAS). Widths <= 7: q - zero fits in a signed byte, so the zero point
// folds into the codes beforehand (__vsub4) and the product is a signed dp4a. Width 8 (wide): unsigned
// codes and the exact integer sum of y.
static __device__ __forceinline__ float mlwq_block_dot(const uint32_t q[16], const bool wide, const int zero,
                                                        const int y[16], const float dy0, const float dy1) {
    int s0 = 0, s1 = 0;
    if (!wide) {
#pragma unroll
        for (int g = 0; g < 8; ++g) {
            s0 = ggml_cuda_dp4a((int) q[g],     y[g],     s0);
            s1 = ggml_cuda_dp4a((int) q[g + 8], y[g + 8], s1);
        }
    } else {
        int t0 = 0, t1 = 0;
#pragma unroll
        for (int g = 0; g < 8; ++g) {
            s0 = mlwq_dp4a_us(q[g],     y[g],     s0);
            s1 = mlwq_dp4a_us(q[g + 8], y[g + 8], s1);
            t0 = ggml_cuda_dp4a(0x01010101, y[g],     t0);
            t1 = ggml_cuda_dp4a(0x01010101, y[g + 8], t1);
        }
        s0 -= zero*t0;
        s1 -= zero*t1;
    }
    return dy0*(float) s0 + dy1*(float) s1;
}

// the 16 activation words and the scales of the two q8_1 blocks of block j in one column
static __device__ __forceinline__ void mlwq_load_y(const block_q8_1 * GGML_CUDA_RESTRICT y, const int j,
                                                   int yv[16], float & dy0, float & dy1) {
    const block_q8_1 * yb = y + 2*j;
#pragma unroll
    for (int g = 0; g < 8; ++g) {
        yv[g]     = ((const int *) yb[0].qs)[g];
        yv[g + 8] = ((const int *) yb[1].qs)[g];
    }
    dy0 = __low2float(yb[0].ds);
    dy1 = __low2float(yb[1].ds);
}

// A warp's walk over the 32-block rounds of one row. carry = the sum of the widths of blocks
// [0, 32*next); dead: a corrupt header was met, the rest of the row reads as 0.
struct mlwq_cursor {
    const uint16_t * hdr;
    const char     * codes;
    int  carry;
    int  next;
    bool dead;
};

static __device__ __forceinline__ mlwq_cursor mlwq_cursor_at(const char * GGML_CUDA_RESTRICT xrow, const int K) {
    return { (const uint16_t *) xrow, xrow + MLWQ_HDR_BYTES*K, 0, 0, false };
}

// This lane's block of one round: header, width (0: no block, or a block that reads as 0), code words.
struct mlwq_round {
    uint32_t h;
    int      w;
    mlwq_block_words bw;
};

// Load round m (lane j: block 32m + j). Rounds are loaded in increasing order; the widths of the
// rounds skipped since the last call (the row's other warps take them) come from their headers
// alone. Weights only: a kernel may call it before waiting for the kernels it depends on. All lanes
// of the warp call it together.
static __device__ __forceinline__ void mlwq_load_round(mlwq_cursor & cur, const int K, const int code_bytes,
                                                       const int m, mlwq_round & r) {
    const int  lane   = threadIdx.x;
    const int  j      = m*WARP_SIZE + lane;
    const bool exists = j < K;
    r.h = exists ? cur.hdr[j] : 0u;
    if (cur.next < m) {
        int  part = 0;
        bool bad  = false;
        for (int jj = cur.next*WARP_SIZE + lane; jj < m*WARP_SIZE; jj += WARP_SIZE) {
            const int  wr = mlwq_hdr_bits(cur.hdr[jj]);
            const bool ok = wr >= GGML_MLWQ_MIN_BITS && wr <= GGML_MLWQ_MAX_BITS;
            part += ok ? wr : 0;
            bad  |= !ok;
        }
        cur.carry += warp_reduce_sum<WARP_SIZE>(part);
        cur.dead   = cur.dead || __any_sync(0xFFFFFFFF, bad);
    }
    cur.next = m + 1;
    int off;
    r.w = mlwq_locate(r.h, exists, code_bytes, cur.carry, cur.dead, off);
    mlwq_load_words({ (const uint16_t *) (cur.codes + off) }, r.w, r.bw);
}

// This lane's part of a loaded round against ncols q8_1 columns, added to acc. y: column 0 (block 0);
// stride_col_y in q8_1 blocks. All lanes of the warp call it together.
template <int ncols>
static __device__ __forceinline__ void mlwq_dot_round(const mlwq_round & r, const int m,
        const block_q8_1 * GGML_CUDA_RESTRICT y, const int stride_col_y, float acc[ncols]) {
    const int w = r.w;
    // which planes occur in this warp (uniform branches below)
    const bool any_a = __any_sync(0xFFFFFFFF, w >= 4);
    const bool any_b = __any_sync(0xFFFFFFFF, w == 8);
    const bool any_c = __any_sync(0xFFFFFFFF, w & 2);
    const bool any_d = __any_sync(0xFFFFFFFF, w & 1);
    if (!any_a && !any_c && !any_d) {
        return;     // no live block in this round
    }
    uint32_t q[16];
    mlwq_decode_words(r.bw, w, any_a, any_b, any_c, any_d, q);
    const bool  wide = any_b && w == 8;   // any_b: a warp-uniform test first
    const int   zero = mlwq_hdr_zero(r.h);
    const float d    = w > 0 ? mlwq_hdr_d(r.h) : 0.0f;   // a block that reads as 0 adds 0
    if (!wide) {
        const uint32_t z4 = 0x01010101u * (uint32_t) zero;
#pragma unroll
        for (int g = 0; g < 16; ++g) {
            q[g] = __vsub4(q[g], z4);
        }
    }
    const int j = m*WARP_SIZE + threadIdx.x;
#pragma unroll
    for (int c = 0; c < ncols; ++c) {
        int   yv[16];
        float dy0 = 0.0f, dy1 = 0.0f;
        if (w > 0) {
            mlwq_load_y(y + (int64_t) c*stride_col_y, j, yv, dy0, dy1);
        } else {
#pragma unroll
            for (int g = 0; g < 16; ++g) {
                yv[g] = 0;
            }
        }
        acc[c] += d*mlwq_block_dot(q, wide, zero, yv, dy0, dy1);
    }
}

static __device__ __forceinline__ float mlwq_glu(const ggml_glu_op op, const float x, const float gate, const float limit) {
    switch (op) {
        case GGML_GLU_OP_SWIGLU:       return x*ggml_cuda_op_silu_single(gate);
        case GGML_GLU_OP_GEGLU:        return x*ggml_cuda_op_gelu_single(gate);
        case GGML_GLU_OP_SWIGLU_OAI:   return ggml_cuda_op_swiglu_oai_single(gate, x);
        case GGML_GLU_OP_SWIGLU_CLAMP: return ggml_cuda_op_swiglu_clamp_single(gate, x, limit);
        default:                       return x*gate;
    }
}

// Sums of a row's lanes, then of its S warps (rows of several rounds): true in the lane that holds
// the row's totals (lane 0 of the row's first warp). All threads of the CTA call it together.
template <int n>
static __device__ __forceinline__ bool mlwq_sum_row(float v[n], const int S, const int s) {
#pragma unroll
    for (int i = 0; i < n; ++i) {
        v[i] = warp_reduce_sum<WARP_SIZE>(v[i]);
    }
    if (S == 1) {
        return threadIdx.x == 0;
    }
    __shared__ float part[MLWQ_WARPS][n];
    if (threadIdx.x == 0) {
#pragma unroll
        for (int i = 0; i < n; ++i) {
            part[threadIdx.y][i] = v[i];
        }
    }
    __syncthreads();
    if (s != 0 || threadIdx.x != 0) {
        return false;
    }
    for (int s2 = 1; s2 < S; ++s2) {
#pragma unroll
        for (int i = 0; i < n; ++i) {
            v[i] += part[threadIdx.y + s2][i];
        }
    }
    return true;
}

// A warp per row (lane j: block j of each round of 32), S = 1, 2 or 4 warps per row for rows of
// several rounds (K > 32). Grid: x = row tiles of MLWQ_WARPS/S rows, y = dst channels, z = dst samples
// (without ids) or tokens (with ids, ncols == 1). Strides of x in bytes; of y in q8_1 blocks; of
// dst in floats. vy_gate: the gate's own activations (its column permutation), or vy. The gate may
// have another MLWQ width than x (llama's ffn_gate and ffn_up usually do): its own code area
// (code_bytes_gate) and row stride (stride_row_gate, bytes); its channel and sample strides are x's.
//
// Without ids, a warp loads its first round of weights (headers, then the codes they locate: two
// dependent memory round trips) before it waits for the kernels it depends on (PDL), so that
// latency overlaps the activations' quantization. No kernel writes an MLWQ tensor (the types have
// no from_float; CPY/SET_ROWS to them are not supported), so the weights are ready at launch.
template <int ncols, bool has_fusion>
__launch_bounds__(WARP_SIZE*MLWQ_WARPS, 1)
static __global__ void mlwq_mul_mat_vec_q(
        const char * vx, const char * vgate, const block_q8_1 * vy, const block_q8_1 * vy_gate, const int32_t * ids,
        const float * x_bias, const float * gate_bias, const ggml_glu_op glu_op, const float glu_limit, float * dst,
        float * dst_gate,
        const int K, const int code_bytes, const int code_bytes_gate, const int nrows_x, const int S,
        const int64_t stride_row_x, const int64_t stride_row_gate, const int stride_col_y, const int stride_col_dst,
        const int channel_ratio, const int64_t stride_channel_x, const int stride_channel_y, const int stride_channel_dst,
        const int nchannels_y,
        const int sample_ratio, const int64_t stride_sample_x, const int stride_sample_y, const int stride_sample_dst,
        const int ids_stride) {
    const int  warp   = threadIdx.y;
    const int  s      = warp % S;                          // this warp's place among its row's S warps
    const int  row    = blockIdx.x*(MLWQ_WARPS/S) + warp/S;
    const bool active = row < nrows_x;
    const int  channel_dst = blockIdx.y;
    const int  M      = (K + WARP_SIZE - 1)/WARP_SIZE;    // rounds per row; s < S <= M
    const bool gated  = has_fusion && vgate != nullptr;

    mlwq_cursor cx = {}, cg = {};
    mlwq_round  rx, rg;
    // round s of this row of x (and of the gate) in the matrix at byte offset mat_off
    auto load_first_round = [&](const int64_t mat_off) {
        cx = mlwq_cursor_at(vx + mat_off + row*stride_row_x, K);
        mlwq_load_round(cx, K, code_bytes, s, rx);
        if (gated) {
            cg = mlwq_cursor_at(vgate + mat_off + row*stride_row_gate, K);
            mlwq_load_round(cg, K, code_bytes_gate, s, rg);
        }
    };
    if (active && !ids) {
        const int64_t channel_x = channel_dst / channel_ratio;
        const int64_t sample_x  = blockIdx.z / sample_ratio;
        load_first_round(sample_x*stride_sample_x + channel_x*stride_channel_x);
    }

    // everything read below may come from earlier kernels (ids, activations, biases)
    ggml_cuda_pdl_sync();

    constexpr int nsums = has_fusion ? 2*ncols : ncols;
    float sums[nsums] = {0.0f};     // [0, ncols): the row; [ncols, 2*ncols): the gate's row
    int64_t dst_off  = 0;
    int64_t bias_off = 0;
    if (active) {
        const block_q8_1 * y;
        const block_q8_1 * yg;
        if (ids) {
            const int token = blockIdx.z;
            const int64_t channel_x = ids[channel_dst + token*ids_stride];
            const int64_t y_off = (int64_t) (channel_dst % nchannels_y)*stride_channel_y + (int64_t) token*stride_col_y;
            y         = vy + y_off;
            yg        = vy_gate + y_off;
            dst_off   = (int64_t) channel_dst*stride_channel_dst + (int64_t) token*stride_col_dst + row;
            bias_off  = channel_x*stride_channel_dst + row;
            load_first_round(channel_x*stride_channel_x);
        } else {
            const int sample_dst = blockIdx.z;
            const int64_t y_off = (int64_t) sample_dst*stride_sample_y + (int64_t) channel_dst*stride_channel_y;
            y         = vy + y_off;
            yg        = vy_gate + y_off;
            dst_off   = (int64_t) sample_dst*stride_sample_dst + (int64_t) channel_dst*stride_channel_dst + row;
            bias_off  = dst_off;
        }
        // round s is loaded; the later ones (rows of > 32*S blocks) load in the loop
        mlwq_dot_round<ncols>(rx, s, y, stride_col_y, sums);
        if (gated) {
            mlwq_dot_round<ncols>(rg, s, yg, stride_col_y, sums + ncols);
        }
        for (int m = s + S; m < M; m += S) {
            mlwq_load_round(cx, K, code_bytes, m, rx);
            mlwq_dot_round<ncols>(rx, m, y, stride_col_y, sums);
            if (gated) {
                mlwq_load_round(cg, K, code_bytes_gate, m, rg);
                mlwq_dot_round<ncols>(rg, m, yg, stride_col_y, sums + ncols);
            }
        }
        GGML_UNUSED(yg);
    }

    // as mul_mat_vec_q: the next kernel may launch now (it waits for this one's results)
    ggml_cuda_pdl_lc();

    if (!mlwq_sum_row<nsums>(sums, S, s) || !active) {
        return;
    }
#pragma unroll
    for (int c = 0; c < ncols; ++c) {
        float result = sums[c];
        if constexpr (has_fusion) {
            if (dst_gate) {     // two products in one launch (ggml_cuda_mlwq_try_pair): each its own output
                dst_gate[dst_off + (int64_t) c*stride_col_dst] = sums[ncols + c];
            }
            if (x_bias) {
                result += x_bias[bias_off + (int64_t) c*stride_col_dst];
            }
            if (gated && !dst_gate) {
                float g = sums[ncols + c];
                if (gate_bias) {
                    g += gate_bias[bias_off + (int64_t) c*stride_col_dst];
                }
                result = mlwq_glu(glu_op, result, g, glu_limit);
            }
        }
        dst[dst_off + (int64_t) c*stride_col_dst] = result;
    }
    GGML_UNUSED_VARS(x_bias, gate_bias, glu_op, glu_limit, dst_gate);
}

template <int ncols, bool has_fusion>
static void mlwq_launch_mmvq(
        const int S, const int nrows_x, const int64_t gy, const int64_t gz, cudaStream_t stream,
        const char * vx, const char * vgate, const block_q8_1 * vy, const block_q8_1 * vy_gate, const int32_t * ids,
        const float * x_bias, const float * gate_bias, const ggml_glu_op glu_op, const float glu_limit, float * dst,
        float * dst_gate, const int K, const int code_bytes, const int code_bytes_gate,
        const int64_t stride_row_x, const int64_t stride_row_gate, const int stride_col_y, const int stride_col_dst,
        const int channel_ratio, const int64_t stride_channel_x, const int stride_channel_y, const int stride_channel_dst,
        const int nchannels_y,
        const int sample_ratio, const int64_t stride_sample_x, const int stride_sample_y, const int stride_sample_dst,
        const int ids_stride) {
    const int  rows_per_cta = MLWQ_WARPS/S;
    const dim3 grid((nrows_x + rows_per_cta - 1)/rows_per_cta, gy, gz);
    const dim3 block(WARP_SIZE, MLWQ_WARPS, 1);
    const ggml_cuda_kernel_launch_params launch_params(grid, block, (size_t) 0, stream);
    ggml_cuda_kernel_launch(mlwq_mul_mat_vec_q<ncols, has_fusion>, launch_params,
        vx, vgate, vy, vy_gate, ids, x_bias, gate_bias, glu_op, glu_limit, dst, dst_gate,
        K, code_bytes, code_bytes_gate, nrows_x, S, stride_row_x, stride_row_gate, stride_col_y, stride_col_dst,
        channel_ratio, stride_channel_x, stride_channel_y, stride_channel_dst, nchannels_y,
        sample_ratio, stride_sample_x, stride_sample_y, stride_sample_dst, ids_stride);
}

// dst_gate: the gate's product is not fused with x's but written there (two products in one launch)
static void mlwq_mul_mat_vec_q_cuda(
        const void * vx, const ggml_type type_x, const void * vy, const int32_t * ids, const ggml_cuda_mm_fusion_args_device fusion,
        float * dst, float * dst_gate, const int ncols_x, const int nrows_x, const int ncols_dst,
        const int stride_row_x, const int stride_col_y, const int stride_col_dst,
        const int nchannels_x, const int nchannels_y, const int nchannels_dst,
        const int stride_channel_x, const int stride_channel_y, const int stride_channel_dst,
        const int nsamples_x, const int nsamples_dst, const int stride_sample_x, const int stride_sample_y, const int stride_sample_dst,
        const int ids_stride, cudaStream_t stream) {
    GGML_ASSERT(ggml_mlwq_is_type(type_x));
    GGML_ASSERT(ncols_x % MLWQ_QK == 0);
    GGML_ASSERT(ncols_dst >= 1 && ncols_dst <= 8);
    GGML_ASSERT(fusion.x_scale == nullptr && fusion.gate_scale == nullptr);
    GGML_ASSERT((uintptr_t) vx % 4 == 0);

    const int64_t ts         = ggml_type_size(type_x);
    const int     K          = ncols_x / MLWQ_QK;
    const int     code_bytes = 8*K*mlwq_avg_bits(type_x);
    GGML_ASSERT((int64_t) K*ts == (int64_t) K*MLWQ_HDR_BYTES + code_bytes);

    const bool has_fusion = fusion.gate != nullptr || fusion.x_bias != nullptr || fusion.gate_bias != nullptr;
    // the gate: of x's type and strides, or (a fused MLWQ gate/up of two widths) contiguous rows of
    // another MLWQ type in one channel and sample, so that x's channel and sample strides are moot
    int     code_bytes_gate = code_bytes;
    int64_t stride_row_gate = stride_row_x*ts;
    if (fusion.gate) {
        GGML_ASSERT((uintptr_t) fusion.gate % 4 == 0);
        if (fusion.gate_type != type_x) {
            GGML_ASSERT(ggml_mlwq_is_type(fusion.gate_type));
            GGML_ASSERT(!ids && nchannels_x == 1 && nsamples_x == 1);
            code_bytes_gate = 8*K*mlwq_avg_bits(fusion.gate_type);
            stride_row_gate = K*(int64_t) ggml_type_size(fusion.gate_type);
            GGML_ASSERT(stride_row_gate == (int64_t) K*MLWQ_HDR_BYTES + code_bytes_gate);
        }
    }

    const char  * x      = (const char *) vx;
    const char  * gate   = (const char *) fusion.gate;
    const float * x_bias = (const float *) fusion.x_bias;
    const float * g_bias = (const float *) fusion.gate_bias;
    // the gate's own q8_1 activations when its column permutation differs from x's (llama's MLWQ
    // gate and up), else the same as x's
    const block_q8_1 * y      = (const block_q8_1 *) vy;
    const block_q8_1 * y_gate = fusion.gate_y ? (const block_q8_1 *) fusion.gate_y : y;

    // S warps share a row when it has several rounds of 32 blocks (K > 32: > 2048 columns)
    const int nrounds = (K + WARP_SIZE - 1) / WARP_SIZE;
    const int S       = nrounds >= 4 ? 4 : nrounds >= 2 ? 2 : 1;

    if (ids) {
        // one token per grid z, each token with its own expert matrix
        GGML_ASSERT(nchannels_dst <= 65535 && ncols_dst <= 65535);
#define MLWQ_ARGS_IDS S, nrows_x, nchannels_dst, ncols_dst, stream, x, gate, y, y_gate, ids, \
            x_bias, g_bias, fusion.glu_op, fusion.glu_limit, dst, dst_gate, K, code_bytes, code_bytes_gate, \
            stride_row_x*ts, stride_row_gate, stride_col_y, stride_col_dst, \
            1, stride_channel_x*ts, stride_channel_y, stride_channel_dst, nchannels_y, \
            1, stride_sample_x*ts, stride_sample_y, stride_sample_dst, ids_stride
        if (has_fusion) {
            mlwq_launch_mmvq<1, true>(MLWQ_ARGS_IDS);
        } else {
            mlwq_launch_mmvq<1, false>(MLWQ_ARGS_IDS);
        }
#undef MLWQ_ARGS_IDS
        return;
    }

    GGML_ASSERT(!has_fusion || ncols_dst == 1);
    GGML_ASSERT(nchannels_dst % nchannels_x == 0 && nsamples_dst % nsamples_x == 0);
    GGML_ASSERT(nchannels_dst <= 65535 && nsamples_dst <= 65535);
#define MLWQ_ARGS S, nrows_x, nchannels_dst, nsamples_dst, stream, x, gate, y, y_gate, ids, \
        x_bias, g_bias, fusion.glu_op, fusion.glu_limit, dst, dst_gate, K, code_bytes, code_bytes_gate, \
            stride_row_x*ts, stride_row_gate, stride_col_y, stride_col_dst, \
        nchannels_dst/nchannels_x, stride_channel_x*ts, stride_channel_y, stride_channel_dst, nchannels_y, \
        nsamples_dst/nsamples_x, stride_sample_x*ts, stride_sample_y, stride_sample_dst, ids_stride
    switch (ncols_dst) {
        case 1:
            if (has_fusion) {
                mlwq_launch_mmvq<1, true>(MLWQ_ARGS);
            } else {
                mlwq_launch_mmvq<1, false>(MLWQ_ARGS);
            }
            break;
        case 2: mlwq_launch_mmvq<2, false>(MLWQ_ARGS); break;
        case 3: mlwq_launch_mmvq<3, false>(MLWQ_ARGS); break;
        case 4: mlwq_launch_mmvq<4, false>(MLWQ_ARGS); break;
        case 5: mlwq_launch_mmvq<5, false>(MLWQ_ARGS); break;
        case 6: mlwq_launch_mmvq<6, false>(MLWQ_ARGS); break;
        case 7: mlwq_launch_mmvq<7, false>(MLWQ_ARGS); break;
        case 8: mlwq_launch_mmvq<8, false>(MLWQ_ARGS); break;
        default: GGML_ABORT("fatal error");
    }
#undef MLWQ_ARGS
}

void ggml_cuda_mlwq_mul_mat_vec_q(
        const void * vx, const ggml_type type_x, const void * vy, const int32_t * ids, const ggml_cuda_mm_fusion_args_device fusion, float * dst,
        const int ncols_x, const int nrows_x, const int ncols_dst,
        const int stride_row_x, const int stride_col_y, const int stride_col_dst,
        const int nchannels_x, const int nchannels_y, const int nchannels_dst,
        const int stride_channel_x, const int stride_channel_y, const int stride_channel_dst,
        const int nsamples_x, const int nsamples_dst, const int stride_sample_x, const int stride_sample_y, const int stride_sample_dst,
        const int ids_stride, cudaStream_t stream) {
    mlwq_mul_mat_vec_q_cuda(vx, type_x, vy, ids, fusion, dst, nullptr, ncols_x, nrows_x, ncols_dst,
        stride_row_x, stride_col_y, stride_col_dst, nchannels_x, nchannels_y, nchannels_dst,
        stride_channel_x, stride_channel_y, stride_channel_dst,
        nsamples_x, nsamples_dst, stride_sample_x, stride_sample_y, stride_sample_dst, ids_stride, stream);
}

// a permuted MLWQ product of one token: MUL_MAT of a 2-D MLWQ weight with its permutation, f32 in and out
static bool mlwq_is_permuted_mat_vec(const ggml_tensor * mm) {
    const ggml_tensor * perm = ggml_mlwq_mul_mat_perm(mm);
    if (perm == nullptr || perm->type != GGML_TYPE_I32) {
        return false;
    }
    const ggml_tensor * w = mm->src[0];
    const ggml_tensor * x = mm->src[1];
    return x->type == GGML_TYPE_F32 && mm->type == GGML_TYPE_F32 && w->ne[2] == 1 && w->ne[3] == 1 &&
           x->ne[1] == 1 && x->ne[2] == 1 && x->ne[3] == 1;
}

bool ggml_cuda_mlwq_can_fuse(const ggml_tensor * mm, const ggml_tensor * gate) {
    if (!mlwq_is_permuted_mat_vec(mm)) {
        return false;
    }
    if (gate == nullptr) {
        return true;
    }
    // one input, two weights of one shape: of one type and layout, or contiguous of two MLWQ widths
    // (the kernel gives the gate its own code area and row stride)
    const ggml_tensor * wg = gate->src[0];
    const ggml_tensor * wx = mm->src[0];
    if (!mlwq_is_permuted_mat_vec(gate) || gate->src[1] != mm->src[1] || !ggml_are_same_shape(wg, wx)) {
        return false;
    }
    if (wg->type == wx->type) {
        return ggml_are_same_stride(wg, wx);
    }
    return ggml_is_contiguous(wg) && ggml_is_contiguous(wx);
}

// ---------------------------------------------------------------------------------------------
// the permuted activations of an MLWQ product (ggml_mlwq_mul_mat: the node carries the weight's
// column permutation perm; permuted column j is original column perm[j])

// The column orders one quantization launch writes: order k is x[..., perm[k][i0]] into y[k].
#define MLWQ_MAX_ORDERS ggml_cuda_mlwq_q8_ahead::MAX_PRODUCTS
struct mlwq_orders {
    const int32_t * perm[MLWQ_MAX_ORDERS];
    block_q8_1    * y[MLWQ_MAX_ORDERS];
};

// order k of a launch: constant indices only (a parameter array indexed at run time would be
// copied to local memory)
static __device__ __forceinline__ void mlwq_order(const mlwq_orders & orders, const int k,
                                                  const int32_t * & perm, block_q8_1 * & y) {
    perm = orders.perm[0];
    y    = orders.y[0];
#pragma unroll
    for (int kk = 1; kk < MLWQ_MAX_ORDERS; ++kk) {
        if (k == kk) {
            perm = orders.perm[kk];
            y    = orders.y[kk];
        }
    }
}

// element i of q8_1 blocks y, quantize_q8_1's arithmetic: the 32 lanes of a warp hold one block
template <typename index_t>
static __device__ __forceinline__ void mlwq_quantize_one(const float xi, block_q8_1 * y, const index_t i) {
    float amax = fabsf(xi);
    float sum  = xi;
    amax = warp_reduce_max<QK8_1>(amax);
    sum  = warp_reduce_sum<QK8_1>(sum);

    const float  d = amax / 127.0f;
    const int8_t q = amax == 0.0f ? 0 : roundf(xi / d);

    y[i / QK8_1].qs[i % QK8_1] = q;
    if (i % QK8_1 == 0) {
        y[i / QK8_1].ds = make_half2(d, sum);
    }
}

// quantize_q8_1 of quantize.cu reading x[perm[i0]]: one thread per element, a q8_1 block per 32
// threads. Grid z: (i3, i2) and then which order, so one launch serves several permuted products
// of one input (gate and up of a fused GLU; llama's q, k and v), each with its own column order.
static __global__ void mlwq_quantize_q8_1_permuted(
        const float * GGML_CUDA_RESTRICT x, const mlwq_orders orders,
        const int64_t ne00, const int64_t s01, const int64_t s02, const int64_t s03,
        const int64_t ne0, const int ne1, const int ne2, const int ne23) {
    ggml_cuda_pdl_lc();     // as quantize_q8_1: the mat-vec kernel may start loading its weights
    const int64_t i0 = (int64_t) blockDim.x*blockIdx.x + threadIdx.x;
    if (i0 >= ne0) {
        return;
    }
    const int     k  = blockIdx.z / ne23;                  // which order
    const int     z  = blockIdx.z % ne23;
    const int64_t i1 = blockIdx.y;
    const int64_t i2 = z % ne2;
    const int64_t i3 = z / ne2;
    const int64_t i_cont = ((i3*ne2 + i2)*ne1 + i1)*ne0 + i0;
    const int32_t * perm;
    block_q8_1    * y;
    mlwq_order(orders, k, perm, y);

    // the permutation is a weight: read it before waiting for the kernel that writes x
    const int32_t p = i0 < ne00 ? perm[i0] : 0;
    ggml_cuda_pdl_sync();
    const float xi = i0 < ne00 ? x[i3*s03 + i2*s02 + i1*s01 + p] : 0.0f;
    mlwq_quantize_one(xi, y, i_cont);
}

static void mlwq_quantize_orders(
        const float * x, const mlwq_orders & orders, const int norders,
        const int64_t ne00, const int64_t s01, const int64_t s02, const int64_t s03,
        const int64_t ne0, const int64_t ne1, const int64_t ne2, const int64_t ne3, cudaStream_t stream) {
    GGML_ASSERT(ne0 % QK8_1 == 0);
    GGML_ASSERT(norders >= 1 && norders <= MLWQ_MAX_ORDERS);
    GGML_ASSERT(ne1 <= 65535 && norders*ne2*ne3 <= 65535);
    constexpr int block_size = 256;
    const dim3 grid((ne0 + block_size - 1)/block_size, ne1, norders*ne2*ne3);
    const ggml_cuda_kernel_launch_params launch_params(grid, dim3(block_size, 1, 1), (size_t) 0, stream);
    ggml_cuda_kernel_launch(mlwq_quantize_q8_1_permuted, launch_params,
        x, orders, ne00, s01, s02, s03, ne0, (int) ne1, (int) ne2, (int) (ne2*ne3));
}

void ggml_cuda_mlwq_quantize_q8_1_permuted(
        const float * x, const int32_t * perm, const int32_t * perm_gate, void * vy, void * vy_gate,
        const int64_t ne00, const int64_t s01, const int64_t s02, const int64_t s03,
        const int64_t ne0, const int64_t ne1, const int64_t ne2, const int64_t ne3, cudaStream_t stream) {
    GGML_ASSERT((perm_gate == nullptr) == (vy_gate == nullptr));
    mlwq_orders orders = {};
    orders.perm[0] = perm;
    orders.y[0]    = (block_q8_1 *) vy;
    orders.perm[1] = perm_gate;
    orders.y[1]    = (block_q8_1 *) vy_gate;
    mlwq_quantize_orders(x, orders, perm_gate ? 2 : 1, ne00, s01, s02, s03, ne0, ne1, ne2, ne3, stream);
}

// ---------------------------------------------------------------------------------------------
// one quantization launch for the permuted products of one input (llama's q, k and v)

// a product that a GLU within the next few nodes takes: the fused gate/up path quantizes for it
static bool mlwq_feeds_glu(ggml_tensor * const * nodes, const int n_nodes, const int i) {
    for (int j = i + 1; j < n_nodes && j <= i + 4; ++j) {
        if (nodes[j]->op == GGML_OP_GLU && (nodes[j]->src[0] == nodes[i] || nodes[j]->src[1] == nodes[i])) {
            return true;
        }
    }
    return false;
}

// whether the memory of two tensors overlaps
static bool mlwq_overlap(const ggml_tensor * a, const ggml_tensor * b) {
    const char * a0 = (const char *) a->data;
    const char * b0 = (const char *) b->data;
    return a0 < b0 + ggml_nbytes(b) && b0 < a0 + ggml_nbytes(a);
}

// Fill ctx.mlwq_ahead for n permuted products of x: a pool buffer of one slice of q8_1 blocks of x's
// padded row per product; returns the column orders the quantizing launch writes into it.
static mlwq_orders mlwq_ahead_alloc(ggml_backend_cuda_context & ctx, const ggml_tensor * x,
                                    const ggml_tensor * const * perms, const int n) {
    ggml_cuda_mlwq_q8_ahead & a = ctx.mlwq_ahead;
    a.x     = x;
    a.n     = n;
    a.slice = GGML_PAD(x->ne[0], MATRIX_ROW_PADDING)*sizeof(block_q8_1)/QK8_1;
    a.q8    = (char *) ctx.pool().alloc(n*a.slice, &a.size);
    mlwq_orders orders = {};
    for (int k = 0; k < n; ++k) {
        a.perm[k]      = perms[k];
        orders.perm[k] = (const int32_t *) perms[k]->data;
        orders.y[k]    = (block_q8_1 *) (a.q8 + k*a.slice);
    }
    return orders;
}

static bool mlwq_ahead_candidate(ggml_tensor * const * nodes, const int n_nodes, const int i) {
    const ggml_tensor * t = nodes[i];
    return t->op == GGML_OP_MUL_MAT && (t->flags & GGML_TENSOR_FLAG_COMPUTE) && mlwq_is_permuted_mat_vec(t) &&
           !mlwq_feeds_glu(nodes, n_nodes, i);
}

void ggml_cuda_mlwq_quantize_ahead(ggml_backend_cuda_context & ctx, ggml_tensor * const * nodes, const int n_nodes, const int i) {
    constexpr int window = 24;      // llama's q, k and v are within a dozen nodes of each other
    ggml_cuda_mlwq_q8_ahead & a = ctx.mlwq_ahead;
    if (a.q8 != nullptr || !mlwq_ahead_candidate(nodes, n_nodes, i)) {
        return;
    }
    const ggml_tensor * x = nodes[i]->src[1];
    const ggml_tensor * perms[MLWQ_MAX_ORDERS] = { ggml_mlwq_mul_mat_perm(nodes[i]) };
    int n = 1;
    for (int j = i + 1; j < n_nodes && j <= i + window && n < MLWQ_MAX_ORDERS; ++j) {
        const ggml_tensor * t = nodes[j];
        if (t->src[1] == x && mlwq_ahead_candidate(nodes, n_nodes, j)) {
            perms[n++] = ggml_mlwq_mul_mat_perm(t);
            continue;
        }
        // a node that writes into x's memory ends the search: a later product would read other values
        if (!ggml_cuda_is_view_or_noop(t) && mlwq_overlap(t, x)) {
            break;
        }
    }
    if (n < 2) {
        return;
    }
    const mlwq_orders orders = mlwq_ahead_alloc(ctx, x, perms, n);
    const int64_t ne10_padded = GGML_PAD(x->ne[0], MATRIX_ROW_PADDING);
    const int64_t ts = ggml_type_size(x->type);
    mlwq_quantize_orders((const float *) x->data, orders, n, x->ne[0], x->nb[1]/ts, x->nb[2]/ts, x->nb[3]/ts,
        ne10_padded, 1, 1, 1, ctx.stream());
}

const void * ggml_cuda_mlwq_q8_take(ggml_backend_cuda_context & ctx, const ggml_tensor * x, const ggml_tensor * perm) {
    ggml_cuda_mlwq_q8_ahead & a = ctx.mlwq_ahead;
    if (a.q8 == nullptr || x != a.x) {
        return nullptr;
    }
    for (int k = 0; k < a.n; ++k) {
        if (a.perm[k] == perm) {
            a.perm[k] = nullptr;
            return a.q8 + k*a.slice;
        }
    }
    return nullptr;
}

void ggml_cuda_mlwq_q8_release(ggml_backend_cuda_context & ctx, const bool end_of_graph) {
    ggml_cuda_mlwq_q8_ahead & a = ctx.mlwq_ahead;
    if (a.q8 == nullptr) {
        return;
    }
    bool all_taken = true;
    for (int k = 0; k < a.n; ++k) {
        all_taken = all_taken && a.perm[k] == nullptr;
    }
    if (all_taken || end_of_graph) {
        ctx.pool().free(a.q8, a.size);
        a = ggml_cuda_mlwq_q8_ahead();
    }
}

// ---------------------------------------------------------------------------------------------
// the RMS norm of a token (llama's attn_norm and ffn_norm: RMS_NORM, then MUL by the norm weight)
// and the q8_1 quantization of its result in the column orders of the permuted products that read it

// norm.cu's rms_norm_f32 with a multiplier for one row, and the q8_1 quantization of its result in
// the products' column orders, as mlwq_quantize_q8_1_permuted does it. Grid: x = slices of
// block_size permuted columns (of ncols_padded), y = which order. Every CTA computes the row's sum
// of squares in norm.cu's arithmetic (block size and reduction: the row is short, and a CTA waiting
// for another would cost more), then quantizes its slice, permuted column j being
// scale*x[perm[j]]*mul[perm[j]]: the value the MUL writes at perm[j]. CTA (0, 0) also writes the
// MUL's result, bit for bit llama's. (The first version ran in ONE CTA, the orders one after the
// other: SmolLM2 tg -18 %, A/B in one call; docs/BENCHMARKS.md, "Seventh GPU session".)
template <int block_size>
static __global__ void mlwq_rms_norm_mul_quantize(
        const float * x, const float * mul, float * dst, const int ncols, const float eps,
        const mlwq_orders orders, const int ncols_padded) {
    ggml_cuda_pdl_lc();     // the first product may start loading its weights
    __shared__ float s_sum[32];     // block_reduce's partial sums
    const int tid = threadIdx.x;
    const int k   = blockIdx.y;     // which order
    const int32_t * perm;
    block_q8_1    * y;
    mlwq_order(orders, k, perm, y);
    const int j = blockIdx.x*block_size + tid;
    // the permutation is a weight: read it before waiting for the kernel that writes x
    const int32_t p = j < ncols ? perm[j] : 0;
    ggml_cuda_pdl_sync();

    float tmp = 0.0f;
    for (int col = tid; col < ncols; col += block_size) {
        const float xi = x[col];
        tmp += xi * xi;
    }
    tmp = block_reduce<block_reduce_method::SUM, block_size>(tmp, s_sum);
    const float mean  = tmp / ncols;
    const float scale = rsqrtf(mean + eps);
    if (blockIdx.x == 0 && blockIdx.y == 0) {
        for (int col = tid; col < ncols; col += block_size) {
            dst[col] = scale * x[col] * mul[col];
        }
    }

    // a warp holds 32 consecutive columns: one q8_1 block (block_size and ncols_padded are multiples of 32)
    if (j >= ncols_padded) {
        return;
    }
    const float xi = j < ncols ? scale * x[p] * mul[p] : 0.0f;
    mlwq_quantize_one(xi, y, j);
}

int ggml_cuda_mlwq_try_norm_ahead(ggml_backend_cuda_context & ctx, ggml_tensor * const * nodes, const int n_nodes, const int i) {
    static const bool disable_fusion = getenv("GGML_CUDA_DISABLE_FUSION") != nullptr && atoi(getenv("GGML_CUDA_DISABLE_FUSION"));
    constexpr int window = 24;
    ggml_cuda_mlwq_q8_ahead & a = ctx.mlwq_ahead;
    if (disable_fusion || a.q8 != nullptr || i + 1 >= n_nodes) {
        return 0;
    }
    ggml_tensor * norm = nodes[i];
    ggml_tensor * mul  = nodes[i + 1];
    if (norm->op != GGML_OP_RMS_NORM || mul->op != GGML_OP_MUL || (mul->flags & GGML_TENSOR_FLAG_COMPUTE) == 0) {
        return 0;
    }
    const ggml_tensor * w = mul->src[0] == norm ? mul->src[1] : mul->src[1] == norm ? mul->src[0] : nullptr;
    const ggml_tensor * x = norm->src[0];
    const int64_t ne0 = x->ne[0];
    // one token of f32, a contiguous weight of one row; the MUL's result not in x's or the weight's
    // memory (the kernel's CTAs read x while one of them writes the result)
    if (w == nullptr || x->type != GGML_TYPE_F32 || norm->type != GGML_TYPE_F32 || mul->type != GGML_TYPE_F32 ||
        w->type != GGML_TYPE_F32 || ggml_nrows(x) != 1 || x->nb[0] != sizeof(float) || !ggml_is_contiguous(mul) ||
        !ggml_are_same_shape(mul, norm) || !ggml_is_contiguous(w) || ggml_nelements(w) != ne0 || w->ne[0] != ne0 ||
        ne0 % QK8_1 != 0 || (norm->flags & GGML_TENSOR_FLAG_OUTPUT) || mlwq_overlap(mul, x) || mlwq_overlap(mul, w)) {
        return 0;
    }
    // the norm's own output is not written: nothing but the MUL may read it
    for (int j = i + 2; j < n_nodes; ++j) {
        for (int s = 0; s < GGML_MAX_SRC; ++s) {
            const ggml_tensor * src = nodes[j]->src[s];
            if (src != nullptr && (src == norm || src->view_src == norm)) {
                return 0;
            }
        }
    }
    // the permuted mat-vec products of the MUL's result that follow (llama: q, v, k; or gate, up)
    const ggml_tensor * perms[MLWQ_MAX_ORDERS];
    int n = 0;
    for (int j = i + 2; j < n_nodes && j <= i + 1 + window && n < MLWQ_MAX_ORDERS; ++j) {
        const ggml_tensor * t = nodes[j];
        if (t->op == GGML_OP_MUL_MAT && (t->flags & GGML_TENSOR_FLAG_COMPUTE) && t->src[1] == mul && mlwq_is_permuted_mat_vec(t)) {
            perms[n++] = ggml_mlwq_mul_mat_perm(t);
            continue;
        }
        if (!ggml_cuda_is_view_or_noop(t) && mlwq_overlap(t, mul)) {
            break;
        }
    }
    if (n == 0) {
        return 0;
    }
    float eps = 0.0f;
    memcpy(&eps, norm->op_params, sizeof(float));

    const mlwq_orders orders = mlwq_ahead_alloc(ctx, mul, perms, n);
    const int64_t ne0_padded = GGML_PAD(ne0, MATRIX_ROW_PADDING);
    // norm.cu's block size for this row length (its reduction order), one CTA per slice and order
    if (ne0 < 1024) {
        const dim3 grid((ne0_padded + 255)/256, n, 1);
        const ggml_cuda_kernel_launch_params launch_params(grid, dim3(256, 1, 1), 0, ctx.stream());
        ggml_cuda_kernel_launch(mlwq_rms_norm_mul_quantize<256>, launch_params, (const float *) x->data,
            (const float *) w->data, (float *) mul->data, (int) ne0, eps, orders, (int) ne0_padded);
    } else {
        const dim3 grid((ne0_padded + 1023)/1024, n, 1);
        const ggml_cuda_kernel_launch_params launch_params(grid, dim3(1024, 1, 1), 0, ctx.stream());
        ggml_cuda_kernel_launch(mlwq_rms_norm_mul_quantize<1024>, launch_params, (const float *) x->data,
            (const float *) w->data, (float *) mul->data, (int) ne0, eps, orders, (int) ne0_padded);
    }
    return 1;
}

// ---------------------------------------------------------------------------------------------
// two permuted products of one input in one mat-vec launch (llama's v and k)

int ggml_cuda_mlwq_try_pair(ggml_backend_cuda_context & ctx, ggml_tensor * const * nodes, const int n_nodes, const int i) {
    static const bool disable_fusion = getenv("GGML_CUDA_DISABLE_FUSION") != nullptr && atoi(getenv("GGML_CUDA_DISABLE_FUSION"));
    if (disable_fusion || !mlwq_ahead_candidate(nodes, n_nodes, i)) {
        return 0;
    }
    // the next node that computes something: only views and reshapes may lie between (llama: V,
    // RESHAPE, K), so that b's output is written early with no other kernel in between
    int j = i + 1;
    while (j < n_nodes && ggml_cuda_is_view_or_noop(nodes[j])) {
        ++j;
    }
    if (j >= n_nodes) {
        return 0;
    }
    ggml_tensor * a = nodes[i];
    ggml_tensor * b = nodes[j];
    const ggml_tensor * x = a->src[1];
    // same input and weight shape (the kernel runs both rows of a warp's row index); a bias or
    // residual {MUL_MAT, ADD} fusion of b stays b's
    if (b->src[1] != x || !mlwq_ahead_candidate(nodes, n_nodes, j) || !ggml_cuda_mlwq_can_fuse(a, b) ||
        mlwq_overlap(a, b) || mlwq_overlap(b, x)) {
        return 0;
    }
    if (j + 1 < n_nodes && nodes[j + 1]->op == GGML_OP_ADD && (nodes[j + 1]->src[0] == b || nodes[j + 1]->src[1] == b)) {
        return 0;
    }
    const ggml_tensor * perm_a = ggml_mlwq_mul_mat_perm(a);
    const ggml_tensor * perm_b = ggml_mlwq_mul_mat_perm(b);
    const int64_t ne10_padded = GGML_PAD(x->ne[0], MATRIX_ROW_PADDING);
    const size_t  slice       = ne10_padded*sizeof(block_q8_1)/QK8_1;

    // the activations: quantized ahead (with q), else both orders in one launch here
    const void * ya = ggml_cuda_mlwq_q8_take(ctx, x, perm_a);
    const void * yb = ggml_cuda_mlwq_q8_take(ctx, x, perm_b);
    ggml_cuda_pool_alloc<char> own(ctx.pool());
    if (ya == nullptr || yb == nullptr) {
        own.alloc(2*slice);
        const int64_t ts = ggml_type_size(x->type);
        ggml_cuda_mlwq_quantize_q8_1_permuted((const float *) x->data, (const int32_t *) perm_a->data,
            (const int32_t *) perm_b->data, own.get(), own.get() + slice,
            x->ne[0], x->nb[1]/ts, x->nb[2]/ts, x->nb[3]/ts, ne10_padded, 1, 1, 1, ctx.stream());
        ya = own.get();
        yb = own.get() + slice;
    }

    const ggml_tensor * wa = a->src[0];
    const ggml_tensor * wb = b->src[0];
    ggml_cuda_mm_fusion_args_device fusion{};
    fusion.gate      = wb->data;
    fusion.gate_y    = yb;
    fusion.gate_type = wb->type;
    const int64_t ts = ggml_type_size(wa->type);
    mlwq_mul_mat_vec_q_cuda(wa->data, wa->type, ya, nullptr, fusion, (float *) a->data, (float *) b->data,
        wa->ne[0], wa->ne[1], 1, wa->nb[1]/ts, ne10_padded/QK8_1, a->ne[0],
        1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, ctx.stream());
    return j - i;
}

// y (contiguous ne00 x ne01 x ne02 x ne03) = x with its columns permuted; x strides in floats
static __global__ void mlwq_permute_f32(
        const float * GGML_CUDA_RESTRICT x, const int32_t * GGML_CUDA_RESTRICT perm, float * GGML_CUDA_RESTRICT y,
        const int64_t ne00, const int64_t ne01, const int ne02,
        const int64_t s01, const int64_t s02, const int64_t s03) {
    const int64_t i0 = (int64_t) blockDim.x*blockIdx.x + threadIdx.x;
    if (i0 >= ne00) {
        return;
    }
    const int64_t i1 = blockIdx.y;
    const int64_t i2 = blockIdx.z % ne02;
    const int64_t i3 = blockIdx.z / ne02;
    const int32_t p  = perm[i0];    // a weight: read before waiting for the kernel that writes x
    ggml_cuda_pdl_sync();
    y[((i3*ne02 + i2)*ne01 + i1)*ne00 + i0] = x[i3*s03 + i2*s02 + i1*s01 + p];
}

void ggml_cuda_mlwq_permute_f32(
        const float * x, const int32_t * perm, float * y,
        const int64_t ne00, const int64_t ne01, const int64_t ne02, const int64_t ne03,
        const int64_t s01, const int64_t s02, const int64_t s03, cudaStream_t stream) {
    GGML_ASSERT(ne01 <= 65535 && ne02*ne03 <= 65535);
    constexpr int block_size = 256;
    const dim3 grid((ne00 + block_size - 1)/block_size, ne01, ne02*ne03);
    const ggml_cuda_kernel_launch_params launch_params(grid, dim3(block_size, 1, 1), (size_t) 0, stream);
    ggml_cuda_kernel_launch(mlwq_permute_f32, launch_params, x, perm, y, ne00, ne01, (int) ne02, s01, s02, s03);
}

// ---------------------------------------------------------------------------------------------
// dequantization (cuBLAS path, get_rows)

template <typename dst_t>
static __device__ __forceinline__ void mlwq_store4(dst_t * p, const float v0, const float v1, const float v2, const float v3, const bool aligned) {
    if constexpr (std::is_same_v<dst_t, half>) {
        if (aligned) {
            const half2 a = __floats2half2_rn(v0, v1);
            const half2 b = __floats2half2_rn(v2, v3);
            uint2 u;
            u.x = *(const uint32_t *) &a;
            u.y = *(const uint32_t *) &b;
            *(uint2 *) p = u;
            return;
        }
    } else if constexpr (std::is_same_v<dst_t, float>) {
        if (aligned) {
            *(float4 *) p = make_float4(v0, v1, v2, v3);
            return;
        }
    }
    p[0] = ggml_cuda_cast<dst_t>(v0);
    p[1] = ggml_cuda_cast<dst_t>(v1);
    p[2] = ggml_cuda_cast<dst_t>(v2);
    p[3] = ggml_cuda_cast<dst_t>(v3);
}

// one warp dequantizes one row of K blocks into out[0 .. 64*K)
template <typename dst_t>
static __device__ __forceinline__ void mlwq_dequant_row(const char * GGML_CUDA_RESTRICT xrow, const int K, const int code_bytes, dst_t * GGML_CUDA_RESTRICT out) {
    const uint16_t * hdr   = (const uint16_t *) xrow;
    const char     * codes = xrow + MLWQ_HDR_BYTES*K;
    const bool aligned = ((uintptr_t) out % (4*sizeof(dst_t))) == 0;

    int  carry = 0;
    bool dead  = false;
    for (int j0 = 0; j0 < K; j0 += WARP_SIZE) {
        const int  j      = j0 + threadIdx.x;
        const bool exists = j < K;
        const uint32_t h  = exists ? hdr[j] : 0u;
        int off;
        const int w = mlwq_locate(h, exists, code_bytes, carry, dead, off);
        if (!exists) {
            continue;
        }
        dst_t * o = out + (int64_t) MLWQ_QK*j;
        if (w == 0) {
#pragma unroll
            for (int g = 0; g < 16; ++g) {
                mlwq_store4(o + 4*g, 0.0f, 0.0f, 0.0f, 0.0f, aligned);
            }
            continue;
        }
        uint32_t q[16];
        mlwq_unpack_w(w, { (const uint16_t *) (codes + off) }, q);
        const float d    = mlwq_hdr_d(h);
        const float zero = (float) mlwq_hdr_zero(h);
#pragma unroll
        for (int g = 0; g < 16; ++g) {
            const uint32_t v = q[g];
            mlwq_store4(o + 4*g,
                d*((float) ( v        & 0xFF) - zero),
                d*((float) ((v >>  8) & 0xFF) - zero),
                d*((float) ((v >> 16) & 0xFF) - zero),
                d*((float) ( v >> 24        ) - zero), aligned);
        }
    }
}

// contiguous output of ne00 x ne01 x ne02 x ne03; src strides in bytes
template <typename dst_t>
static __global__ void mlwq_dequant_nc(
        const char * vx, dst_t * y, const int K, const int code_bytes, const int64_t ne01, const int64_t ne02,
        const int64_t nb01, const int64_t nb02, const int64_t nb03) {
    const int64_t i01 = (int64_t) blockIdx.x*MLWQ_WARPS + threadIdx.y;
    const int64_t i02 = blockIdx.y;
    const int64_t i03 = blockIdx.z;
    ggml_cuda_pdl_sync();
    if (i01 >= ne01) {
        return;
    }
    const char * xrow = vx + i01*nb01 + i02*nb02 + i03*nb03;
    dst_t * out = y + ((i03*ne02 + i02)*ne01 + i01)*(int64_t) (MLWQ_QK*K);
    mlwq_dequant_row(xrow, K, code_bytes, out);
}

template <typename dst_t>
static void mlwq_dequant_nc_cuda(const void * vx, dst_t * y,
        const int64_t ne00, const int64_t ne01, const int64_t ne02, const int64_t ne03,
        const int64_t s01, const int64_t s02, const int64_t s03, const ggml_type type, cudaStream_t stream) {
    GGML_ASSERT(ne00 % MLWQ_QK == 0);
    GGML_ASSERT((uintptr_t) vx % 4 == 0);
    GGML_ASSERT(ne02 <= 65535 && ne03 <= 65535);
    const int64_t ts = ggml_type_size(type);
    const int K = ne00 / MLWQ_QK;
    const int code_bytes = 8*K*mlwq_avg_bits(type);
    const dim3 grid((ne01 + MLWQ_WARPS - 1) / MLWQ_WARPS, ne02, ne03);
    const dim3 block(WARP_SIZE, MLWQ_WARPS, 1);
    const ggml_cuda_kernel_launch_params launch_params(grid, block, (size_t) 0, stream);
    ggml_cuda_kernel_launch(mlwq_dequant_nc<dst_t>, launch_params,
        (const char *) vx, y, K, code_bytes, ne01, ne02, s01*ts, s02*ts, s03*ts);
}

template <typename dst_t, ggml_type type>
static void mlwq_dequant_nc_cuda_t(const void * vx, dst_t * y,
        int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
        int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream) {
    mlwq_dequant_nc_cuda<dst_t>(vx, y, ne00, ne01, ne02, ne03, s01, s02, s03, type, stream);
}

template <typename dst_t>
static to_t_nc_cuda_t<dst_t> mlwq_get_to_nc(const ggml_type type) {
    switch (type) {
        case GGML_TYPE_MLWQ2: return mlwq_dequant_nc_cuda_t<dst_t, GGML_TYPE_MLWQ2>;
        case GGML_TYPE_MLWQ3: return mlwq_dequant_nc_cuda_t<dst_t, GGML_TYPE_MLWQ3>;
        case GGML_TYPE_MLWQ4: return mlwq_dequant_nc_cuda_t<dst_t, GGML_TYPE_MLWQ4>;
        default:              return nullptr;
    }
}

to_fp16_nc_cuda_t ggml_cuda_mlwq_get_to_fp16_nc(const ggml_type type) { return mlwq_get_to_nc<half>(type); }
to_fp32_nc_cuda_t ggml_cuda_mlwq_get_to_fp32_nc(const ggml_type type) { return mlwq_get_to_nc<float>(type); }
to_bf16_nc_cuda_t ggml_cuda_mlwq_get_to_bf16_nc(const ggml_type type) { return mlwq_get_to_nc<nv_bfloat16>(type); }

// get_rows: dst row (i10, i11, i12) = src0 row src1[i10, i11, i12] of channel i11, sample i12
template <typename dst_t>
static __global__ void mlwq_get_rows(
        const char * src0, const int32_t * src1, dst_t * dst, const int K, const int code_bytes, const int64_t ne10,
        const int64_t nb01, const int64_t nb02, const int64_t nb03,
        const int64_t s10, const int64_t s11, const int64_t s12,
        const int64_t s1, const int64_t s2, const int64_t s3) {
    const int64_t i10 = (int64_t) blockIdx.x*MLWQ_WARPS + threadIdx.y;
    const int64_t i11 = blockIdx.y;
    const int64_t i12 = blockIdx.z;
    ggml_cuda_pdl_sync();
    if (i10 >= ne10) {
        return;
    }
    const int64_t i01 = src1[i10*s10 + i11*s11 + i12*s12];
    mlwq_dequant_row(src0 + i01*nb01 + i11*nb02 + i12*nb03, K, code_bytes, dst + i10*s1 + i11*s2 + i12*s3);
}

template <typename dst_t>
void ggml_cuda_mlwq_get_rows(
        const void * src0_d, const ggml_type src0_type, const int32_t * src1_d, dst_t * dst_d,
        const int64_t ne00, const size_t nb01, const size_t nb02, const size_t nb03,
        const int64_t ne10, const int64_t ne11, const int64_t ne12, const size_t nb10, const size_t nb11, const size_t nb12,
        const size_t nb1, const size_t nb2, const size_t nb3,
        cudaStream_t stream) {
    GGML_ASSERT(ggml_mlwq_is_type(src0_type));
    GGML_ASSERT(ne00 % MLWQ_QK == 0);
    GGML_ASSERT((uintptr_t) src0_d % 2 == 0 && nb01 % 2 == 0 && nb02 % 2 == 0 && nb03 % 2 == 0);   // 16-bit reads
    GGML_ASSERT(ne11 <= 65535 && ne12 <= 65535);
    const int K = ne00 / MLWQ_QK;
    const int code_bytes = 8*K*mlwq_avg_bits(src0_type);
    const dim3 grid((ne10 + MLWQ_WARPS - 1) / MLWQ_WARPS, ne11, ne12);
    const dim3 block(WARP_SIZE, MLWQ_WARPS, 1);
    const ggml_cuda_kernel_launch_params launch_params(grid, block, (size_t) 0, stream);
    ggml_cuda_kernel_launch(mlwq_get_rows<dst_t>, launch_params,
        (const char *) src0_d, src1_d, dst_d, K, code_bytes, ne10,
        (int64_t) nb01, (int64_t) nb02, (int64_t) nb03,
        (int64_t) (nb10/sizeof(int32_t)), (int64_t) (nb11/sizeof(int32_t)), (int64_t) (nb12/sizeof(int32_t)),
        (int64_t) (nb1/sizeof(dst_t)), (int64_t) (nb2/sizeof(dst_t)), (int64_t) (nb3/sizeof(dst_t)));
}

#define MLWQ_DECL_GET_ROWS(dst_t) \
    template void ggml_cuda_mlwq_get_rows<dst_t>( \
        const void *, ggml_type, const int32_t *, dst_t *, int64_t, size_t, size_t, size_t, \
        int64_t, int64_t, int64_t, size_t, size_t, size_t, size_t, size_t, size_t, cudaStream_t)
MLWQ_DECL_GET_ROWS(float);
MLWQ_DECL_GET_ROWS(half);
MLWQ_DECL_GET_ROWS(nv_bfloat16);
MLWQ_DECL_GET_ROWS(int32_t);
#undef MLWQ_DECL_GET_ROWS
