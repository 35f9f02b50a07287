// The q8_1 activations of permuted MLWQ products: quantization in a weight's column order, one
// launch for several products of one input (quantized ahead), the RMS norm fused with that
// quantization, and the permuted f32 copy of the cuBLAS path. Design notes: ggml_patch/CUDA.md.

#include "mlwq-common.cuh"

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
// MUL's result, bit for bit llama's. One CTA for all the orders is slower (ggml_patch/CUDA.md).
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
// the cuBLAS path (batches > MMVQ_MAX_BATCH_SIZE): a permuted copy of the activations

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
