// MLWQ2/MLWQ3/MLWQ4 dequantization: to f16, f32 or bf16 for the cuBLAS path (any strides), and
// GET_ROWS. Byte format: ggml_patch/FORMAT.md.

#include "mlwq-common.cuh"

// ---------------------------------------------------------------------------------------------
// dequantization (cuBLAS path, get_rows)

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
