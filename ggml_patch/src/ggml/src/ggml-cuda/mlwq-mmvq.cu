// MLWQ2/MLWQ3/MLWQ4 matrix-vector product against q8_1 activations: MUL_MAT and MUL_MAT_ID up to
// MMVQ's batch, its bias/gate/GLU fusions, two permuted products of one input in one launch. Byte
// format: ggml_patch/FORMAT.md. Design notes: ggml_patch/CUDA.md.
//
// Mat-vec: one lane per 64-column block, rounds of 32 consecutive blocks; a warp per row, or S = 2
// or 4 warps per row of several rounds, warp s taking rounds s, s+S, ... A block's code offset is
// 8 * (sum of the widths before it): an inclusive warp scan over the round's headers plus a carry
// (the widths of earlier rounds, from their headers alone). Lanes decode their blocks with the
// same instructions whatever the width (absent bit planes load nothing), because the 32 blocks of
// a round span several tiers and a switch on the width would run each width present in turn.
// Generation (one column, one matrix) on Ampere and later goes to mlwq_mul_mat_vec_q_pipe, which
// copies whole rows into shared memory ahead of that decode; mlwq_mul_mat_vec_q takes the rest.

#include "mlwq-common.cuh"
#include "unary.cuh"

#ifndef MLWQ_LOAD8
#define MLWQ_LOAD8 1    // 0: every row reads its codes 16 bits at a time (for A/B builds)
#endif
#ifndef MLWQ_MIN_CTAS
#define MLWQ_MIN_CTAS 1         // CTAs an SM must hold (a register bound for ptxas), plain kernels
#endif
#ifndef MLWQ_MIN_CTAS_FUSED
#define MLWQ_MIN_CTAS_FUSED 1   // the same for the kernels with a fusion (two rows' rounds in flight)
#endif
#ifndef MLWQ_PIPE
#define MLWQ_PIPE 1     // 0: generation's mat-vec without the shared-memory pipeline (for A/B builds)
#endif
#ifndef MLWQ_Y_EARLY
#define MLWQ_Y_EARLY 1  // 0: a round's activations load after its codes are decoded (for A/B builds)
#endif

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

// The code words of one block for the width-generic decoder: a width w is w/4 four-bit planes,
// then a 2-bit plane if w & 2, then a 1-bit plane if w & 1. Planes the width lacks load nothing
// and stay 0, so every lane runs the same instructions whatever its block's width. The second
// 4-bit plane (w == 8, rare) is not held here: it loads in the decode, only in warps that have one,
// so its 8 registers are not live across the round's load.
struct mlwq_block_words {
    int a[8];   // first 4-bit plane  (w >= 4)
    int c[4];   // 2-bit plane        (w & 2)
    int d[2];   // 1-bit plane        (w & 1)
};

// n 8-byte words from p into v[2n], or zeros if !load. a8: the row's code area is 8-byte aligned
// (K % 4 == 0, base and strides multiples of 8), so a block's codes, at 8*(sum of the widths
// before it), and each of its planes (multiples of 8 bytes) load 8 bytes at a time; else 2 bytes.
template <bool a8, int n>
static __device__ __forceinline__ void mlwq_load_plane(const char * p, const bool load, int v[2*n]) {
    if constexpr (a8) {
#pragma unroll
        for (int i = 0; i < n; ++i) {
            const uint2 t = load ? ((const uint2 *) p)[i] : make_uint2(0, 0);
            v[2*i]     = (int) t.x;
            v[2*i + 1] = (int) t.y;
        }
    } else {
        const mlwq_words pw = { (const uint16_t *) p };
#pragma unroll
        for (int i = 0; i < 2*n; ++i) {
            v[i] = load ? pw[i] : 0;
        }
    }
}

// w = 0 (no block, or a block that reads as 0) loads nothing
template <bool a8>
static __device__ __forceinline__ void mlwq_load_words(const char * p, const int w, mlwq_block_words & bw) {
    const char * pc = p + 32*(w >> 2);
    mlwq_load_plane<a8, 4>(p, w >= 4, bw.a);
    mlwq_load_plane<a8, 2>(pc, w & 2, bw.c);
    mlwq_load_plane<a8, 1>(pc + ((w & 2) ? 16 : 0), w & 1, bw.d);
}

// Codes of the block at p, group g in q[g]. The any_* flags are warp-uniform (some lane of the
// warp has such a plane), so a plane no lane has costs nothing.
template <bool a8>
static __device__ __forceinline__ void mlwq_decode_words(const mlwq_block_words & bw, const char * p, const int w,
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
        int b[8];
        mlwq_load_plane<a8, 4>(p + 32, w == 8, b);
#pragma unroll
        for (int g = 0; g < 16; ++g) {
            q[g] |= (((uint32_t) b[g & 7] >> (g < 8 ? 0 : 4)) & 0x0F0F0F0Fu) << 4;
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

// the 16 activation words and the scales of the two q8_1 blocks of block j in one column, or zeros
// (no load) if !live
static __device__ __forceinline__ void mlwq_load_y(const block_q8_1 * GGML_CUDA_RESTRICT y, const int j, const bool live,
                                                   int yv[16], float & dy0, float & dy1) {
    const block_q8_1 * yb = y + 2*j;
#pragma unroll
    for (int g = 0; g < 8; ++g) {
        yv[g]     = live ? ((const int *) yb[0].qs)[g] : 0;
        yv[g + 8] = live ? ((const int *) yb[1].qs)[g] : 0;
    }
    dy0 = live ? __low2float(yb[0].ds) : 0.0f;
    dy1 = live ? __low2float(yb[1].ds) : 0.0f;
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

// This lane's block of one round: header, width (0: no block, or a block that reads as 0), code
// offset in the row's code area, code words.
struct mlwq_round {
    uint32_t h;
    int      w;
    int      off;
    mlwq_block_words bw;
};

// The header of this lane's block of round m (lane j: block 32m + j): the first half of loading a
// round, so that a kernel can issue the headers of two rows before either row's scan waits for them.
static __device__ __forceinline__ void mlwq_load_header(const mlwq_cursor & cur, const int K, const int m, mlwq_round & r) {
    const int j = m*WARP_SIZE + threadIdx.x;
    r.h = j < K ? cur.hdr[j] : 0u;
}

// The rest of loading round m, after mlwq_load_header: its codes. Rounds are loaded in increasing
// order; the widths of the rounds skipped since the last call (the row's other warps take them)
// come from their headers alone. Weights only: a kernel may call it before waiting for the kernels
// it depends on. All lanes of the warp call it together.
template <bool a8>
static __device__ __forceinline__ void mlwq_load_round(mlwq_cursor & cur, const int K, const int code_bytes,
                                                       const int m, mlwq_round & r) {
    const int  lane   = threadIdx.x;
    const int  j      = m*WARP_SIZE + lane;
    const bool exists = j < K;
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
    r.w = mlwq_locate(r.h, exists, code_bytes, cur.carry, cur.dead, r.off);
    mlwq_load_words<a8>(cur.codes + r.off, r.w, r.bw);
}

// This lane's part of a loaded round of the row at cur against ncols q8_1 columns, added to acc.
// y: column 0 (block 0); stride_col_y in q8_1 blocks. All lanes of the warp call it together.
template <int ncols, bool a8>
static __device__ __forceinline__ void mlwq_dot_round(const mlwq_round & r, const mlwq_cursor & cur, const int m,
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
    const int j = m*WARP_SIZE + threadIdx.x;
    // column 0's activations load first, so that their latency overlaps the decode's wait for the codes
    int   yv[16];
    float dy0, dy1;
    if (MLWQ_Y_EARLY) {
        mlwq_load_y(y, j, w > 0, yv, dy0, dy1);
    }
    uint32_t q[16];
    mlwq_decode_words<a8>(r.bw, cur.codes + r.off, w, any_a, any_b, any_c, any_d, q);
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
#pragma unroll
    for (int c = 0; c < ncols; ++c) {
        if (c > 0 || !MLWQ_Y_EARLY) {
            mlwq_load_y(y + (int64_t) c*stride_col_y, j, w > 0, yv, dy0, dy1);
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

// One output of a row: x's product (and, with a fusion, the gate's: g) to dst[dst_off], through the
// bias and GLU epilogues; with dst_gate (two products in one launch, ggml_cuda_mlwq_try_pair) each
// product to its own output. bias_off: the row's place in the biases.
template <bool has_fusion>
static __device__ __forceinline__ void mlwq_store_row(float x, const float g, const bool gated, const float * x_bias,
        const float * gate_bias, const ggml_glu_op glu_op, const float glu_limit, float * dst, float * dst_gate,
        const int64_t dst_off, const int64_t bias_off) {
    if constexpr (has_fusion) {
        if (dst_gate) {
            dst_gate[dst_off] = g;
        }
        if (x_bias) {
            x += x_bias[bias_off];
        }
        if (gated && !dst_gate) {
            x = mlwq_glu(glu_op, x, gate_bias ? g + gate_bias[bias_off] : g, glu_limit);
        }
    }
    dst[dst_off] = x;
    GGML_UNUSED_VARS(g, gated, x_bias, gate_bias, glu_op, glu_limit, dst_gate, bias_off);
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
template <int ncols, bool has_fusion, bool a8>
__launch_bounds__(WARP_SIZE*MLWQ_WARPS, has_fusion ? MLWQ_MIN_CTAS_FUSED : MLWQ_MIN_CTAS)
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
    // round m of this row of x and of the gate: both headers first, so that their latencies overlap
    auto load_rounds = [&](const int m) {
        mlwq_load_header(cx, K, m, rx);
        if (gated) {
            mlwq_load_header(cg, K, m, rg);
        }
        mlwq_load_round<a8>(cx, K, code_bytes, m, rx);
        if (gated) {
            mlwq_load_round<a8>(cg, K, code_bytes_gate, m, rg);
        }
    };
    // round s of this row of x (and of the gate) in the matrix at byte offset mat_off
    auto load_first_round = [&](const int64_t mat_off) {
        cx = mlwq_cursor_at(vx + mat_off + row*stride_row_x, K);
        if (gated) {
            cg = mlwq_cursor_at(vgate + mat_off + row*stride_row_gate, K);
        }
        load_rounds(s);
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
        mlwq_dot_round<ncols, a8>(rx, cx, s, y, stride_col_y, sums);
        if (gated) {
            mlwq_dot_round<ncols, a8>(rg, cg, s, yg, stride_col_y, sums + ncols);
        }
        for (int m = s + S; m < M; m += S) {
            load_rounds(m);
            mlwq_dot_round<ncols, a8>(rx, cx, m, y, stride_col_y, sums);
            if (gated) {
                mlwq_dot_round<ncols, a8>(rg, cg, m, yg, stride_col_y, sums + ncols);
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
        const int64_t col = (int64_t) c*stride_col_dst;
        mlwq_store_row<has_fusion>(sums[c], has_fusion ? sums[nsums - ncols + c] : 0.0f, gated, x_bias, gate_bias,
                                   glu_op, glu_limit, dst, dst_gate, dst_off + col, bias_off + col);
    }
}

// ---------------------------------------------------------------------------------------------
// Generation's mat-vec through shared memory (ncols == 1, one matrix, 16-byte aligned rows of
// K % 8 == 0 blocks, Ampere and later). A row is one contiguous span (its headers, then its fixed
// code area of 8*K*b bytes), so a CTA copies whole rows into shared memory with cp.async before it
// reads a header: no header-then-codes round trip, and the bytes in flight sit in shared memory,
// not in registers. Persistent CTAs: CTA c takes groups c, c + gridDim.x, ... of MLWQ_WARPS rows
// (a warp per row, all its rounds, with mlwq_mul_mat_vec_q's per-round code), the copies of its
// next MLWQ_PIPE_STAGES - 1 groups in flight while it computes one. The gate (fusions) rides in the
// same group. Bigger groups (several rows a warp) measured slower on small matrices: fewer CTAs.

#define MLWQ_PIPE_STAGES 3      // row groups in shared memory: one computed, the others in flight

static __device__ __forceinline__ void mlwq_copy16(char * dst_shared, const char * src) {
#ifdef CP_ASYNC_AVAILABLE
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;"
        : : "r"((unsigned) __cvta_generic_to_shared(dst_shared)), "l"(src) : "memory");
#else
    *(int4 *) dst_shared = *(const int4 *) src;
#endif
}

static __device__ __forceinline__ void mlwq_copy_commit() {
#ifdef CP_ASYNC_AVAILABLE
    asm volatile("cp.async.commit_group;" : : : "memory");
#endif
}

// this thread's copies of all but the n latest committed groups are done
template <int n>
static __device__ __forceinline__ void mlwq_copy_wait() {
#ifdef CP_ASYNC_AVAILABLE
    asm volatile("cp.async.wait_group %0;" : : "n"(n) : "memory");
#endif
}

// nbytes (a multiple of 16) from src to dst, both 16-byte aligned, by all threads of the CTA
static __device__ __forceinline__ void mlwq_copy_span(char * dst, const char * src, const int nbytes) {
    const int tid = threadIdx.y*WARP_SIZE + threadIdx.x;
    for (int i = tid; i < nbytes/16; i += WARP_SIZE*MLWQ_WARPS) {
        mlwq_copy16(dst + 16*i, src + 16*i);
    }
}

template <bool has_fusion>
__launch_bounds__(WARP_SIZE*MLWQ_WARPS, 1)
static __global__ void mlwq_mul_mat_vec_q_pipe(
        const char * vx, const char * vgate, const block_q8_1 * vy, const block_q8_1 * vy_gate,
        const float * x_bias, const float * gate_bias, const ggml_glu_op glu_op, const float glu_limit, float * dst,
        float * dst_gate, const int K, const int code_bytes, const int code_bytes_gate, const int nrows_x) {
    extern __shared__ int4 mlwq_pipe_smem[];
    char * const smem = (char *) mlwq_pipe_smem;

    const bool gated       = has_fusion && vgate != nullptr;
    const int  row_bytes_x = MLWQ_HDR_BYTES*K + code_bytes;
    const int  row_bytes_g = gated ? MLWQ_HDR_BYTES*K + code_bytes_gate : 0;
    const int  stage_bytes = MLWQ_WARPS*(row_bytes_x + row_bytes_g);
    const int  ngroups     = (nrows_x + MLWQ_WARPS - 1)/MLWQ_WARPS;
    const int  mine        = (ngroups - (int) blockIdx.x + (int) gridDim.x - 1)/(int) gridDim.x;  // gridDim.x <= ngroups

    // the first row of this CTA's i-th row group
    auto group_row0 = [&](const int i) { return (int) (blockIdx.x + i*gridDim.x)*MLWQ_WARPS; };
    // this CTA's i-th row group (rows of x, then of the gate) into stage i % MLWQ_PIPE_STAGES
    auto copy_group = [&](const int i) {
        const int r0 = group_row0(i);
        const int nr = min(MLWQ_WARPS, nrows_x - r0);
        char * st = smem + (i % MLWQ_PIPE_STAGES)*stage_bytes;
        mlwq_copy_span(st, vx + (int64_t) r0*row_bytes_x, nr*row_bytes_x);
        if (gated) {
            mlwq_copy_span(st + MLWQ_WARPS*row_bytes_x, vgate + (int64_t) r0*row_bytes_g, nr*row_bytes_g);
        }
    };
    // weights only: their copies start before the wait for the kernels this one depends on
#pragma unroll
    for (int i = 0; i < MLWQ_PIPE_STAGES - 1; ++i) {
        if (i < mine) {
            copy_group(i);
        }
        mlwq_copy_commit();
    }

    ggml_cuda_pdl_sync();

    const int M = (K + WARP_SIZE - 1)/WARP_SIZE;
    for (int i = 0; i < mine; ++i) {
        if (i + MLWQ_PIPE_STAGES - 1 < mine) {
            copy_group(i + MLWQ_PIPE_STAGES - 1);
        }
        mlwq_copy_commit();     // an empty group past the end keeps the count of the wait below
        mlwq_copy_wait<MLWQ_PIPE_STAGES - 1>();
        __syncthreads();        // every thread's copies of group i are in

        const char * st  = smem + (i % MLWQ_PIPE_STAGES)*stage_bytes;
        const int    row = group_row0(i) + threadIdx.y;
        if (row < nrows_x) {
            float sums[2] = {0.0f, 0.0f};   // the row's, the gate's row's
            mlwq_cursor cx = mlwq_cursor_at(st + threadIdx.y*row_bytes_x, K);
            mlwq_cursor cg = {};
            if (gated) {
                cg = mlwq_cursor_at(st + MLWQ_WARPS*row_bytes_x + threadIdx.y*row_bytes_g, K);
            }
            for (int m = 0; m < M; ++m) {
                mlwq_round r;
                mlwq_load_header(cx, K, m, r);
                mlwq_load_round<true>(cx, K, code_bytes, m, r);
                mlwq_dot_round<1, true>(r, cx, m, vy, 0, sums);
                if (gated) {
                    mlwq_load_header(cg, K, m, r);
                    mlwq_load_round<true>(cg, K, code_bytes_gate, m, r);
                    mlwq_dot_round<1, true>(r, cg, m, vy_gate, 0, sums + 1);
                }
            }
            sums[0] = warp_reduce_sum<WARP_SIZE>(sums[0]);
            if (gated) {
                sums[1] = warp_reduce_sum<WARP_SIZE>(sums[1]);
            }
            if (threadIdx.x == 0) {
                mlwq_store_row<has_fusion>(sums[0], sums[1], gated, x_bias, gate_bias, glu_op, glu_limit, dst, dst_gate,
                                           row, row);
            }
        }
        __syncthreads();        // group i's stage is read before a later copy overwrites it
    }

    ggml_cuda_pdl_lc();
}

// Launches mlwq_mul_mat_vec_q_pipe if the product qualifies (see there); false otherwise.
// stride_row_x, stride_row_gate: bytes.
template <bool has_fusion>
static bool mlwq_try_pipe(const char * vx, const char * vgate, const block_q8_1 * vy, const block_q8_1 * vy_gate,
        const float * x_bias, const float * gate_bias, const ggml_glu_op glu_op, const float glu_limit, float * dst,
        float * dst_gate, const int K, const int code_bytes, const int code_bytes_gate, const int nrows_x,
        const int64_t stride_row_x, const int64_t stride_row_gate, cudaStream_t stream) {
    const int id = ggml_cuda_get_device();
    const ggml_cuda_device_info::cuda_device_info & info = ggml_cuda_info().devices[id];
    const int64_t row_bytes_x = (int64_t) MLWQ_HDR_BYTES*K + code_bytes;
    const int64_t row_bytes_g = vgate ? (int64_t) MLWQ_HDR_BYTES*K + code_bytes_gate : 0;
    const auto on16 = [](const void * p) { return (uintptr_t) p % 16 == 0; };
    // K % 8 == 0: a row, K*(2 + 8b) bytes, is whole 16-byte copies
    if (!MLWQ_PIPE || !GGML_CUDA_CC_IS_NVIDIA(info.cc) || info.cc < GGML_CUDA_CC_AMPERE || K % 8 != 0 ||
        stride_row_x != row_bytes_x || (vgate && stride_row_gate != row_bytes_g) || !on16(vx) || (vgate && !on16(vgate))) {
        return false;
    }
    const size_t smem = (size_t) (MLWQ_PIPE_STAGES*MLWQ_WARPS*(row_bytes_x + row_bytes_g));
    if (smem > info.smpbo) {
        return false;
    }
    const auto kernel = mlwq_mul_mat_vec_q_pipe<has_fusion>;
    CUDA_SET_SHARED_MEMORY_LIMIT(kernel, info.smpbo);
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, WARP_SIZE*MLWQ_WARPS, smem));
    const int64_t ngroups = (nrows_x + MLWQ_WARPS - 1)/MLWQ_WARPS;
    const dim3 grid((unsigned) std::min<int64_t>(ngroups, (int64_t) std::max(per_sm, 1)*info.nsm), 1, 1);
    const dim3 block(WARP_SIZE, MLWQ_WARPS, 1);
    const ggml_cuda_kernel_launch_params launch_params(grid, block, smem, stream);
    ggml_cuda_kernel_launch(kernel, launch_params, vx, vgate, vy, vy_gate, x_bias, gate_bias, glu_op, glu_limit,
        dst, dst_gate, K, code_bytes, code_bytes_gate, nrows_x);
    return true;
}

template <int ncols, bool has_fusion>
static void mlwq_launch_mmvq(
        const bool a8, const int S, const int nrows_x, const int64_t gy, const int64_t gz, cudaStream_t stream,
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
    ggml_cuda_kernel_launch(a8 ? mlwq_mul_mat_vec_q<ncols, has_fusion, true> : mlwq_mul_mat_vec_q<ncols, has_fusion, false>, launch_params,
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

    // 8-byte code loads: every row's code area (row + 2K bytes) and the gate's on 8 bytes
    const auto on8 = [](const int64_t v) { return v % 8 == 0; };
    const bool a8  = MLWQ_LOAD8 && K % 4 == 0 && on8((int64_t) (uintptr_t) vx) && on8(stride_row_x*ts) &&
                     on8(stride_channel_x*ts) && on8(stride_sample_x*ts) &&
                     (!fusion.gate || (on8((int64_t) (uintptr_t) fusion.gate) && on8(stride_row_gate)));

    // S warps share a row when it has several rounds of 32 blocks (K > 32: > 2048 columns)
    const int nrounds = (K + WARP_SIZE - 1) / WARP_SIZE;
    const int S       = nrounds >= 4 ? 4 : nrounds >= 2 ? 2 : 1;

    if (ids) {
        // one token per grid z, each token with its own expert matrix
        GGML_ASSERT(nchannels_dst <= 65535 && ncols_dst <= 65535);
#define MLWQ_ARGS_IDS a8, S, nrows_x, nchannels_dst, ncols_dst, stream, x, gate, y, y_gate, ids, \
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
#define MLWQ_ARGS a8, S, nrows_x, nchannels_dst, nsamples_dst, stream, x, gate, y, y_gate, ids, \
        x_bias, g_bias, fusion.glu_op, fusion.glu_limit, dst, dst_gate, K, code_bytes, code_bytes_gate, \
            stride_row_x*ts, stride_row_gate, stride_col_y, stride_col_dst, \
        nchannels_dst/nchannels_x, stride_channel_x*ts, stride_channel_y, stride_channel_dst, nchannels_y, \
        nsamples_dst/nsamples_x, stride_sample_x*ts, stride_sample_y, stride_sample_dst, ids_stride
#define MLWQ_PIPE_ARGS x, gate, y, y_gate, x_bias, g_bias, fusion.glu_op, fusion.glu_limit, dst, dst_gate, \
        K, code_bytes, code_bytes_gate, nrows_x, stride_row_x*ts, stride_row_gate, stream
    const bool one_matrix = nchannels_dst == 1 && nsamples_dst == 1;
    switch (ncols_dst) {
        case 1:
            if (has_fusion) {
                if (!one_matrix || !mlwq_try_pipe<true>(MLWQ_PIPE_ARGS)) {
                    mlwq_launch_mmvq<1, true>(MLWQ_ARGS);
                }
            } else {
                if (!one_matrix || !mlwq_try_pipe<false>(MLWQ_PIPE_ARGS)) {
                    mlwq_launch_mmvq<1, false>(MLWQ_ARGS);
                }
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
#undef MLWQ_PIPE_ARGS
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
