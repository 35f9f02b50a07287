// MLWQ2/MLWQ3/MLWQ4 on CUDA (project mlwq, ggml_patch/FORMAT.md is the byte format).
//
// A row of K = ne0/64 blocks is [K headers of 2 bytes][codes of block 0][codes of block 1]...
// header j = u8 scale code | u8 (zero | (bits - 1) << 5); block j's codes are 8*bits_j bytes of bit planes.
// Block j's code offset is 8*sum_{i<j} bits_i, so kernels find it with a warp prefix sum over
// the headers. An MLWQ product node carries the weight's column permutation (ggml_mlwq_mul_mat in
// ggml-mlwq.h); the activations are gathered in that order while they are quantized. The row has the fixed size K*(2 + 8*b); kernels never read past it, whatever the
// headers say.
//
// Registration points in llama.cpp's files (ggml_patch/patches/0002-cuda.patch) call only the
// functions below. They are defined in mlwq-mmvq.cu (mat-vec, the v/k pair), mlwq-quantize.cu (the
// permuted activations and their fusions, the permuted f32 copy) and mlwq-convert.cu
// (dequantization, get_rows); mlwq-common.cuh holds what those files share.
#pragma once

#include "common.cuh"
#include "convert.cuh"

#include "ggml-mlwq.h"

// Quantized matrix-vector product against q8_1 activations (the mul_mat_vec_q path, MUL_MAT and
// MUL_MAT_ID, ncols_dst <= MMVQ_MAX_BATCH_SIZE, optional bias/gate/GLU fusion).
// Same arguments as mmvq.cu's mul_mat_vec_q_switch_type; strides of x in units of type_size bytes.
// fusion.gate_y: the gate's own q8_1 activations (null: the same as vy).
void ggml_cuda_mlwq_mul_mat_vec_q(
        const void * vx, ggml_type type_x, const void * vy, const int32_t * ids, const ggml_cuda_mm_fusion_args_device fusion, float * dst,
        int ncols_x, int nrows_x, int ncols_dst,
        int stride_row_x, int stride_col_y, int stride_col_dst,
        int nchannels_x, int nchannels_y, int nchannels_dst,
        int stride_channel_x, int stride_channel_y, int stride_channel_dst,
        int nsamples_x, int nsamples_dst, int stride_sample_x, int stride_sample_y, int stride_sample_dst,
        int ids_stride, cudaStream_t stream);

// q8_1 activations of an MLWQ product with a column permutation: quantize_row_q8_1_cuda's output
// for x[..., perm[i0]] (same arguments, plus perm). mmvq.cu calls it for such nodes. With perm_gate
// and vy_gate (else both null) the same launch also writes x[..., perm_gate[i0]] to vy_gate: the
// gate's activations of a fused gate/up/GLU product.
void ggml_cuda_mlwq_quantize_q8_1_permuted(
        const float * x, const int32_t * perm, const int32_t * perm_gate, void * vy, void * vy_gate,
        int64_t ne00, int64_t s01, int64_t s02, int64_t s03,
        int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3, cudaStream_t stream);

// Whether the permuted MLWQ product mm (one token, f32) may run as a fused mat-vec kernel: with
// gate == nullptr, mm + bias (ggml-cuda.cu's {MUL_MAT, ADD} fusion: llama's residual adds); else
// glu(gate, mm) ({MUL_MAT, MUL_MAT, GLU}), gate a permuted product of the same input with a weight of
// the same type and layout. mmvq.cu's fusion path takes the permutations from
// ggml_cuda_mm_fusion_args_host (x_perm, gate_perm); the kernel reads the gate's activations from
// fusion.gate_y. (ggml_cuda_should_fuse_mul_mat_vec_q refuses permuted MLWQ nodes: a fusion that
// does not pass the permutations would quantize x unpermuted.)
bool ggml_cuda_mlwq_can_fuse(const ggml_tensor * mm, const ggml_tensor * gate);

// One quantization launch for several permuted products of one input (llama's q, k and v: three
// weights, three column orders). ggml-cuda.cu's graph loop, before node i: if node i is a permuted
// MLWQ product of one token and later nodes (within a window, until a node writes x's memory) are
// such products of the same x, quantize x in each of their orders into one pool buffer kept in
// ctx.mlwq_ahead (not for products that a GLU fusion takes: it quantizes its pair itself).
void ggml_cuda_mlwq_quantize_ahead(ggml_backend_cuda_context & ctx, ggml_tensor * const * nodes, int n_nodes, int i);
// mmvq.cu: the q8_1 activations of x in the order perm if they were quantized ahead, else nullptr;
// each part is taken once
const void * ggml_cuda_mlwq_q8_take(ggml_backend_cuda_context & ctx, const ggml_tensor * x, const ggml_tensor * perm);
// the graph loop, before each node: the buffer goes back to the pool once every part is taken (the
// pool is a stack: nothing allocated after it is live between nodes); at the end of the graph, always
void ggml_cuda_mlwq_q8_release(ggml_backend_cuda_context & ctx, bool end_of_graph);
// The RMS norm of one token and the quantization of its result for the products that read it, in
// one launch. ggml-cuda.cu's graph loop, before node i: if nodes i, i+1 are RMS_NORM and a MUL by a
// one-row weight (llama's attn_norm, ffn_norm; nothing else reads the norm) and permuted MLWQ
// products of the MUL's result follow (llama's q, v, k or gate, up), one kernel writes the MUL's
// result (norm.cu's arithmetic) and its q8_1 activations in each product's column order into
// ctx.mlwq_ahead, where the products take them. Returns 1 (the MUL is done too) or 0. Off with
// GGML_CUDA_DISABLE_FUSION=1.
int ggml_cuda_mlwq_try_norm_ahead(ggml_backend_cuda_context & ctx, ggml_tensor * const * nodes, int n_nodes, int i);
// Two products in one mat-vec launch. ggml-cuda.cu's graph loop, before node i: if node i and the
// next node that computes something (only views and reshapes between: llama's V, RESHAPE, K) are
// permuted MLWQ products of one token of the same input, with weights of one shape, one kernel
// computes both (as a gate/up pair, each written to its own output; activations from the
// quantization ahead or quantized here in one launch). Returns the nodes it consumed after i (0:
// none, the node runs as usual). Off with GGML_CUDA_DISABLE_FUSION=1, as llama.cpp's fusions.
int ggml_cuda_mlwq_try_pair(ggml_backend_cuda_context & ctx, ggml_tensor * const * nodes, int n_nodes, int i);
// ggml-cuda.cu's test for nodes that compute nothing (made non-static by 0002-cuda.patch for the
// search above)
bool ggml_cuda_is_view_or_noop(const ggml_tensor * t);

// y (contiguous, ne00 x ne01 x ne02 x ne03 floats) = x with its columns permuted, y[.., i0] =
// x[.., perm[i0]]; x strides in floats. The cuBLAS path (batches > MMVQ_MAX_BATCH_SIZE) of an MLWQ
// product with a column permutation multiplies this copy.
void ggml_cuda_mlwq_permute_f32(
        const float * x, const int32_t * perm, float * y,
        int64_t ne00, int64_t ne01, int64_t ne02, int64_t ne03,
        int64_t s01, int64_t s02, int64_t s03, cudaStream_t stream);

// Dequantization of non-contiguous (or contiguous) tensors, for the cuBLAS path. The contiguous
// converters of convert.cu only get an element count, which cannot locate MLWQ's row headers, so
// the MLWQ types register only these.
to_fp16_nc_cuda_t ggml_cuda_mlwq_get_to_fp16_nc(ggml_type type);
to_fp32_nc_cuda_t ggml_cuda_mlwq_get_to_fp32_nc(ggml_type type);
to_bf16_nc_cuda_t ggml_cuda_mlwq_get_to_bf16_nc(ggml_type type);

// GET_ROWS with an MLWQ src0 (same arguments as getrows.cu's switch; dst_t = float, half,
// nv_bfloat16 or int32_t).
template <typename dst_t>
void ggml_cuda_mlwq_get_rows(
        const void * src0_d, ggml_type src0_type, const int32_t * src1_d, dst_t * dst_d,
        int64_t ne00, size_t nb01, size_t nb02, size_t nb03,
        int64_t ne10, int64_t ne11, int64_t ne12, size_t nb10, size_t nb11, size_t nb12,
        size_t nb1, size_t nb2, size_t nb3,
        cudaStream_t stream);
