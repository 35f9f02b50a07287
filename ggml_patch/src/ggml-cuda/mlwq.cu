// MLWQ2/MLWQ3/MLWQ4 kernels: matrix-vector product against q8_1 activations, dequantization
// for cuBLAS, get_rows. Byte format: ggml_patch/FORMAT.md. Design notes: ggml_patch/CUDA.md.
//
// Work split of the mat-vec: a row's K blocks are taken in rounds of 32/L blocks, L = 1, 2 or 4
// lanes per block; S = 1, 2 or 4 warps share a row, warp s taking rounds s, s+S, ... A round
// reads its headers (contiguous), an inclusive warp scan of their widths gives each block its
// code offset (8 * sum of the widths before it); the sum over rounds owned by the row's other
// warps comes from their headers alone (a strided load and a warp reduction). Each lane unpacks
// its share of the block's bit planes (the 4-column groups g = u, u+L, ... of the block's 16, as
// bytes in words) and takes dp4a products with the q8_1 activations.
// Every code read is bounds-checked against the row's fixed code area (8*K*b bytes): as on the
// CPU, from the first block whose width is outside 1..8 or whose codes would end past the row,
// blocks read as 0.

#include "mlwq.cuh"
#include "unary.cuh"

#include "ggml-mlwq.h"

#define MLWQ_QK           QK_MLWQ                // 64 columns per block
#define MLWQ_HDR_BYTES    GGML_MLWQ_HEADER_SIZE  // fp16 d | u8 zero | u8 bits
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

// A 64-column block is 16 groups of 4 columns; group g = columns 4g..4g+3, as 4 byte-codes in a
// word (low byte = lowest column). A lane with sub-index u of L lanes per block holds the groups
// g = u + i*L, i < 16/L, in q[i]. Plane words are read as ints (code offsets are multiples of 4).

// 4-bit plane, 32 bytes: byte i = column i (low nibble) | column i+32 (high nibble)
template <int L>
static __device__ __forceinline__ void mlwq_plane4(const int * GGML_CUDA_RESTRICT p, const int u, uint32_t q[16/L], const int shift) {
#pragma unroll
    for (int i = 0; i < 16/L; ++i) {
        const int g = u + i*L;
        const uint32_t v = p[g & 7];
        q[i] |= ((g < 8 ? v : v >> 4) & 0x0F0F0F0Fu) << shift;
    }
}

// 2-bit plane, 16 bytes: byte i = columns i, i+16, i+32, i+48 in bits 0-1, 2-3, 4-5, 6-7
template <int L>
static __device__ __forceinline__ void mlwq_plane2(const int * GGML_CUDA_RESTRICT p, const int u, uint32_t q[16/L], const int shift) {
#pragma unroll
    for (int i = 0; i < 16/L; ++i) {
        const int g = u + i*L;
        const uint32_t v = p[g & 3];
        q[i] |= ((v >> (2*(g >> 2))) & 0x03030303u) << shift;
    }
}

// 1-bit plane, 8 bytes: byte i = columns i, i+8, ..., i+56 in bits 0..7
template <int L>
static __device__ __forceinline__ void mlwq_plane1(const int * GGML_CUDA_RESTRICT p, const int u, uint32_t q[16/L], const int shift) {
#pragma unroll
    for (int i = 0; i < 16/L; ++i) {
        const int g = u + i*L;
        const uint32_t v = p[g & 1];
        q[i] |= ((v >> (g >> 1)) & 0x01010101u) << shift;
    }
}

// planes of a width-W block, greedy: 4-bit planes while >= 4 remain, then a 2-bit, then a 1-bit
template <int W, int L>
static __device__ __forceinline__ void mlwq_unpack(const int * GGML_CUDA_RESTRICT p, const int u, uint32_t q[16/L]) {
    static_assert(W >= 1 && W <= 8, "MLWQ block width out of range");
#pragma unroll
    for (int i = 0; i < 16/L; ++i) {
        q[i] = 0;
    }
    constexpr int n4  = W / 4;            // 0, 1 or 2 four-bit planes
    constexpr int rem = W - 4*n4;         // 0..3
    if constexpr (n4 >= 1) { mlwq_plane4<L>(p,     u, q, 0); }
    if constexpr (n4 >= 2) { mlwq_plane4<L>(p + 8, u, q, 4); }
    constexpr int o2 = 8*n4;              // int offset of the next plane
    if constexpr (rem >= 2) { mlwq_plane2<L>(p + o2, u, q, 4*n4); }
    constexpr int o1 = o2 + (rem >= 2 ? 4 : 0);
    if constexpr (rem & 1)  { mlwq_plane1<L>(p + o1, u, q, 4*n4 + (rem >= 2 ? 2 : 0)); }
}

// unpack a block of runtime width w (1..8)
template <int L>
static __device__ __forceinline__ void mlwq_unpack_w(const int w, const int * GGML_CUDA_RESTRICT p, const int u, uint32_t q[16/L]) {
    switch (w) {
        case 1:  mlwq_unpack<1, L>(p, u, q); break;
        case 2:  mlwq_unpack<2, L>(p, u, q); break;
        case 3:  mlwq_unpack<3, L>(p, u, q); break;
        case 4:  mlwq_unpack<4, L>(p, u, q); break;
        case 5:  mlwq_unpack<5, L>(p, u, q); break;
        case 6:  mlwq_unpack<6, L>(p, u, q); break;
        case 7:  mlwq_unpack<7, L>(p, u, q); break;
        default: mlwq_unpack<8, L>(p, u, q); break;
    }
}

// Locate this lane's block in a round (u = the lane's sub-index among its block's lanes, 0 if
// one lane per block): returns its width, or 0 if the block does not exist or must read as 0,
// and its byte offset in the code area; advances carry (a sum of widths) by the round's total.
// As on the CPU (ggml-mlwq.c), from the first corrupt header on (width outside 1..8, or codes
// ending past the row) every block reads as 0: `dead` carries that across rounds.
// All lanes of the warp call it together.
static __device__ __forceinline__ int mlwq_locate(const uint32_t h, const bool exists, const int u, const int code_bytes,
                                                  int & carry, bool & dead, int & off) {
    const int  lane = threadIdx.x;
    const int  wraw = exists ? (int) (h >> 24) : 0;
    const bool wok  = wraw >= GGML_MLWQ_MIN_BITS && wraw <= GGML_MLWQ_MAX_BITS;
    const int  w    = exists && wok ? wraw : 0;
    int incl = u == 0 ? w : 0; // each block counted once, by its first lane
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
    const bool bad = exists && u == 0 && (!wok || off + 8*w > code_bytes);
    const uint32_t bad_mask = __ballot_sync(0xFFFFFFFF, bad);
    const bool ok = exists && !dead && (bad_mask & (0xFFFFFFFFu >> (WARP_SIZE - 1 - lane))) == 0;
    dead = dead || bad_mask != 0;
    return ok ? w : 0;
}

static __device__ __forceinline__ float mlwq_hdr_d(const uint32_t h) {
    return __half2float(__ushort_as_half((unsigned short) (h & 0xFFFF)));
}

static __device__ __forceinline__ int mlwq_hdr_zero(const uint32_t h) {
    return (int) ((h >> 16) & 0xFF);
}

// One row against ncols q8_1 columns, the rounds r = wir, wir+S, ... of it: partial sums of this
// lane added to acc. xrow: row start; y: activation column 0 (block 0); stride_col_y in q8_1 blocks.
template <int ncols, int L>
static __device__ __forceinline__ void mlwq_row_dot(
        const char * GGML_CUDA_RESTRICT xrow, const int K, const int code_bytes,
        const block_q8_1 * GGML_CUDA_RESTRICT y, const int stride_col_y, const int wir, const int S, float acc[ncols]) {
    constexpr int BPR = WARP_SIZE/L; // blocks per round
    const uint32_t * hdr   = (const uint32_t *) xrow;
    const char     * codes = xrow + MLWQ_HDR_BYTES*K;
    const int lane    = threadIdx.x;
    const int u       = lane % L;
    const int nrounds = (K + BPR - 1)/BPR;

    int  carry = 0;     // sum of the widths of blocks [0, next*BPR)
    bool dead  = false;
    int  next  = 0;
    for (int r = wir; r < nrounds; r += S) {
        const int  j      = r*BPR + lane/L;
        const bool exists = j < K;
        const uint32_t h  = exists ? hdr[j] : 0u;
        if (next < r) {
            // rounds next..r-1 belong to the row's other warps: their widths from the headers alone
            int  part = 0;
            bool bad  = false;
            for (int jj = next*BPR + lane; jj < r*BPR; jj += WARP_SIZE) {
                const int wr = (int) (hdr[jj] >> 24);
                const bool ok = wr >= GGML_MLWQ_MIN_BITS && wr <= GGML_MLWQ_MAX_BITS;
                part += ok ? wr : 0;
                bad  |= !ok;
            }
            carry += warp_reduce_sum<WARP_SIZE>(part);
            dead   = dead || __any_sync(0xFFFFFFFF, bad);
        }
        int off;
        const int w = mlwq_locate(h, exists, u, code_bytes, carry, dead, off);
        next = r + 1;
        if (w == 0) {
            continue;
        }
        uint32_t q[16/L];
        mlwq_unpack_w<L>(w, (const int *) (codes + off), u, q);

        // sum_i d*(q_i - zero)*y_i over the QUANTIZED activations yq, as the CPU does: with the q8_1
        // block's float sum ds.y (of the unquantized y) the zero-point term would not cancel the
        // activation rounding carried by the uncentred codes q, and the error grows with the zero
        // point (measured: mean KLD 0.028 against the CPU on SmolLM2, vs 0.005 for cuBLAS).
        // Widths <= 7: q - zero fits in a signed byte, so the zero point folds into the codes
        // (one __vsub4 per word) and the product is a signed dp4a. Width 8: unsigned codes and the
        // exact integer sum of yq.
        const float d    = mlwq_hdr_d(h);
        const int   zero = mlwq_hdr_zero(h);
        const bool  wide = w == 8;
        if (!wide) {
            const uint32_t z4 = 0x01010101u * (uint32_t) zero;
#pragma unroll
            for (int i = 0; i < 16/L; ++i) {
                q[i] = __vsub4(q[i], z4);
            }
        }
#pragma unroll
        for (int c = 0; c < ncols; ++c) {
            const block_q8_1 * yb = y + (int64_t) c*stride_col_y + 2*j;
            int s0 = 0, s1 = 0;     // sum (q - zero)*yq, or sum q*yq when wide
            int t0 = 0, t1 = 0;     // sum yq (wide only)
#pragma unroll
            for (int i = 0; i < 16/L; ++i) {
                const int g = u + i*L;
                const int yv = ((const int *) yb[g >> 3].qs)[g & 7];
                const bool first = i < 8/L;
                if (!wide) {
                    (first ? s0 : s1) = ggml_cuda_dp4a((int) q[i], yv, first ? s0 : s1);
                } else {
                    (first ? s0 : s1) = mlwq_dp4a_us(q[i], yv, first ? s0 : s1);
                    (first ? t0 : t1) = ggml_cuda_dp4a(0x01010101, yv, first ? t0 : t1);
                }
            }
            const float dy0 = __low2float(yb[0].ds);
            const float dy1 = __low2float(yb[1].ds);
            acc[c] += d*(dy0*(float) (s0 - zero*t0) + dy1*(float) (s1 - zero*t1));
        }
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

// ---------------------------------------------------------------------------------------------
// matrix-vector product

// Grid: x = row tiles of MLWQ_WARPS/S rows, y = dst channels, z = dst samples (without ids) or
// tokens (with ids, ncols == 1). Block: WARP_SIZE x MLWQ_WARPS; S warps per row.
// Strides of x in bytes; of y in q8_1 blocks; of dst in floats.
template <int ncols, int L, bool has_fusion>
__launch_bounds__(WARP_SIZE*MLWQ_WARPS, 1)
static __global__ void mlwq_mul_mat_vec_q(
        const char * vx, const char * vgate, const block_q8_1 * vy, const int32_t * ids,
        const float * x_bias, const float * gate_bias, const ggml_glu_op glu_op, const float glu_limit, float * dst,
        const int K, const int code_bytes, const int nrows_x, const int S,
        const int64_t stride_row_x, const int stride_col_y, const int stride_col_dst,
        const int channel_ratio, const int64_t stride_channel_x, const int stride_channel_y, const int stride_channel_dst,
        const int nchannels_y,
        const int sample_ratio, const int64_t stride_sample_x, const int stride_sample_y, const int stride_sample_dst,
        const int ids_stride) {
    const int  warp   = threadIdx.y;
    const int  wir    = warp % S;                          // this warp's place among its row's S warps
    const int  row    = blockIdx.x*(MLWQ_WARPS/S) + warp/S;
    const bool active = row < nrows_x;
    const int  channel_dst = blockIdx.y;

    // everything read below may come from earlier kernels (ids, activations, biases)
    ggml_cuda_pdl_sync();

    float acc[ncols] = {0.0f};
    [[maybe_unused]] float acc_gate[ncols] = {0.0f};
    int64_t dst_off  = 0;
    int64_t bias_off = 0;
    if (active) {
        int64_t channel_x;
        int64_t sample_x;
        const block_q8_1 * y;
        if (ids) {
            const int token = blockIdx.z;
            channel_x = ids[channel_dst + token*ids_stride];
            sample_x  = 0;
            y         = vy + (int64_t) (channel_dst % nchannels_y)*stride_channel_y + (int64_t) token*stride_col_y;
            dst_off   = (int64_t) channel_dst*stride_channel_dst + (int64_t) token*stride_col_dst + row;
            bias_off  = channel_x*stride_channel_dst + row;
        } else {
            const int sample_dst = blockIdx.z;
            channel_x = channel_dst / channel_ratio;
            sample_x  = sample_dst  / sample_ratio;
            y         = vy + (int64_t) sample_dst*stride_sample_y + (int64_t) channel_dst*stride_channel_y;
            dst_off   = (int64_t) sample_dst*stride_sample_dst + (int64_t) channel_dst*stride_channel_dst + row;
            bias_off  = dst_off;
        }
        const int64_t x_off = sample_x*stride_sample_x + channel_x*stride_channel_x + row*stride_row_x;

        mlwq_row_dot<ncols, L>(vx + x_off, K, code_bytes, y, stride_col_y, wir, S, acc);
        if constexpr (has_fusion) {
            if (vgate) {
                mlwq_row_dot<ncols, L>(vgate + x_off, K, code_bytes, y, stride_col_y, wir, S, acc_gate);
            }
        }
    }

#pragma unroll
    for (int c = 0; c < ncols; ++c) {
        acc[c] = warp_reduce_sum<WARP_SIZE>(acc[c]);
        if constexpr (has_fusion) {
            acc_gate[c] = warp_reduce_sum<WARP_SIZE>(acc_gate[c]);
        }
    }

    if (S > 1) {
        // the row's S warps: sum in the first one
        __shared__ float part[MLWQ_WARPS][ncols];
        [[maybe_unused]] __shared__ float part_gate[has_fusion ? MLWQ_WARPS : 1][ncols];
        if (threadIdx.x == 0) {
#pragma unroll
            for (int c = 0; c < ncols; ++c) {
                part[warp][c] = acc[c];
                if constexpr (has_fusion) {
                    part_gate[warp][c] = acc_gate[c];
                }
            }
        }
        __syncthreads();
        if (wir != 0 || threadIdx.x != 0) {
            return;
        }
        for (int s = 1; s < S; ++s) {
#pragma unroll
            for (int c = 0; c < ncols; ++c) {
                acc[c] += part[warp + s][c];
                if constexpr (has_fusion) {
                    acc_gate[c] += part_gate[warp + s][c];
                }
            }
        }
    }

    if (!active || threadIdx.x != 0) {
        return;
    }
#pragma unroll
    for (int c = 0; c < ncols; ++c) {
        float result = acc[c];
        if constexpr (has_fusion) {
            if (x_bias) {
                result += x_bias[bias_off + (int64_t) c*stride_col_dst];
            }
            if (vgate) {
                float g = acc_gate[c];
                if (gate_bias) {
                    g += gate_bias[bias_off + (int64_t) c*stride_col_dst];
                }
                result = mlwq_glu(glu_op, result, g, glu_limit);
            }
        }
        dst[dst_off + (int64_t) c*stride_col_dst] = result;
    }
    GGML_UNUSED_VARS(x_bias, gate_bias, glu_op, glu_limit);
}

template <int ncols, bool has_fusion>
static void mlwq_launch_mmvq(
        const int L, const int S, const dim3 & grid, cudaStream_t stream,
        const char * vx, const char * vgate, const block_q8_1 * vy, const int32_t * ids,
        const float * x_bias, const float * gate_bias, const ggml_glu_op glu_op, const float glu_limit, float * dst,
        const int K, const int code_bytes, const int nrows_x,
        const int64_t stride_row_x, const int stride_col_y, const int stride_col_dst,
        const int channel_ratio, const int64_t stride_channel_x, const int stride_channel_y, const int stride_channel_dst,
        const int nchannels_y,
        const int sample_ratio, const int64_t stride_sample_x, const int stride_sample_y, const int stride_sample_dst,
        const int ids_stride) {
    const dim3 block(WARP_SIZE, MLWQ_WARPS, 1);
    const ggml_cuda_kernel_launch_params launch_params(grid, block, (size_t) 0, stream);
#define MLWQ_LAUNCH(L_) ggml_cuda_kernel_launch(mlwq_mul_mat_vec_q<ncols, L_, has_fusion>, launch_params, \
        vx, vgate, vy, ids, x_bias, gate_bias, glu_op, glu_limit, dst, \
        K, code_bytes, nrows_x, S, stride_row_x, stride_col_y, stride_col_dst, \
        channel_ratio, stride_channel_x, stride_channel_y, stride_channel_dst, nchannels_y, \
        sample_ratio, stride_sample_x, stride_sample_y, stride_sample_dst, ids_stride)
    switch (L) {
        case 1:  MLWQ_LAUNCH(1); break;
        case 2:  MLWQ_LAUNCH(2); break;
        default: MLWQ_LAUNCH(4); break;
    }
#undef MLWQ_LAUNCH
}

void ggml_cuda_mlwq_mul_mat_vec_q(
        const void * vx, const ggml_type type_x, const void * vy, const int32_t * ids, const ggml_cuda_mm_fusion_args_device fusion, float * dst,
        const int ncols_x, const int nrows_x, const int ncols_dst,
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
    if (fusion.gate) {
        GGML_ASSERT((uintptr_t) fusion.gate % 4 == 0);
    }

    const char  * x      = (const char *) vx;
    const char  * gate   = (const char *) fusion.gate;
    const float * x_bias = (const float *) fusion.x_bias;
    const float * g_bias = (const float *) fusion.gate_bias;

    // Lanes per block and warps per row: about 128 threads per row for the usual widths (K = 32
    // for 2048 columns: 4 lanes per block, 4 warps of one round each), so that even a 512-row
    // matrix keeps the GPU busy and a warp's chain of dependent loads (header -> codes) is short.
    const int L       = K <= 64 ? 4 : K <= 128 ? 2 : 1;
    const int nrounds = (K + WARP_SIZE/L - 1) / (WARP_SIZE/L);
    const int S       = nrounds >= 4 ? 4 : nrounds >= 2 ? 2 : 1;
    const int nrow_tiles = (nrows_x + MLWQ_WARPS/S - 1) / (MLWQ_WARPS/S);

    if (ids) {
        // one token per grid z, each token with its own expert matrix
        GGML_ASSERT(nchannels_dst <= 65535 && ncols_dst <= 65535);
        const dim3 grid(nrow_tiles, nchannels_dst, ncols_dst);
#define MLWQ_ARGS_IDS L, S, grid, stream, x, gate, (const block_q8_1 *) vy, ids, x_bias, g_bias, fusion.glu_op, fusion.glu_limit, dst, \
            K, code_bytes, nrows_x, stride_row_x*ts, stride_col_y, stride_col_dst, \
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
    const dim3 grid(nrow_tiles, nchannels_dst, nsamples_dst);
#define MLWQ_ARGS L, S, grid, stream, x, gate, (const block_q8_1 *) vy, ids, x_bias, g_bias, fusion.glu_op, fusion.glu_limit, dst, \
        K, code_bytes, nrows_x, stride_row_x*ts, stride_col_y, stride_col_dst, \
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
    const uint32_t * hdr   = (const uint32_t *) xrow;
    const char     * codes = xrow + MLWQ_HDR_BYTES*K;
    const bool aligned = ((uintptr_t) out % (4*sizeof(dst_t))) == 0;

    int  carry = 0;
    bool dead  = false;
    for (int j0 = 0; j0 < K; j0 += WARP_SIZE) {
        const int  j      = j0 + threadIdx.x;
        const bool exists = j < K;
        const uint32_t h  = exists ? hdr[j] : 0u;
        int off;
        const int w = mlwq_locate(h, exists, 0, code_bytes, carry, dead, off);
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
        mlwq_unpack_w<1>(w, (const int *) (codes + off), 0, q);
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
    GGML_ASSERT((uintptr_t) src0_d % 4 == 0 && nb01 % 4 == 0 && nb02 % 4 == 0 && nb03 % 4 == 0);
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
