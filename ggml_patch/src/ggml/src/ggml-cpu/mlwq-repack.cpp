// MLWQ weights in ggml's CPU_REPACK buffer: as llama.cpp repacks Q4_0 into interleaved rows at load,
// an MLWQ weight's rows are interleaved by 8 (ggml_mlwq_x8_pack, FORMAT.md "Repacked rows (CPU)") on
// builds with that kernel, and its products run ggml_mlwq_x8_gemm. A weight whose rows do not pack
// (format 2 allows widths that differ between rows, and corrupt rows) keeps its rows and the row
// kernels (ggml_mlwq_gemm).
#include "mlwq-repack.h"

#include "ggml-cpu-impl.h"
#include "ggml-mlwq.h"
#include "mlwq-cpu.h"
#include "repack.h"

#include <cstring>

namespace {

// src1 (F32) as q8_1 columns in wdata, gathered through the weight's column permutation where the node
// carries one; the threads share the columns
void mlwq_quantize_src1(const ggml_compute_params * params, const ggml_tensor * op, char * wdata) {
    const ggml_tensor *     src1       = op->src[1];
    const ggml_tensor *     perm       = ggml_mlwq_mul_mat_perm(op);
    const ggml_from_float_t from_float = ggml_get_type_traits_cpu(GGML_TYPE_Q8_1)->from_float;
    const size_t            nbw1       = ggml_row_size(GGML_TYPE_Q8_1, src1->ne[0]);
    const int64_t           ncols      = src1->ne[1] * src1->ne[2] * src1->ne[3];
    for (int64_t i = params->ith; i < ncols; i += params->nth) {
        const int64_t i11 = i % src1->ne[1];
        const int64_t i12 = (i / src1->ne[1]) % src1->ne[2];
        const int64_t i13 = i / (src1->ne[1] * src1->ne[2]);
        const float * x = (const float *) ((const char *) src1->data + i11*src1->nb[1] + i12*src1->nb[2] + i13*src1->nb[3]);
        if (perm) {
            ggml_mlwq_from_float_permuted(GGML_TYPE_Q8_1, from_float, x, (const int32_t *) perm->data, src1->ne[0], wdata + i*nbw1);
        } else {
            from_float(x, wdata + i*nbw1, src1->ne[0]);
        }
    }
}

class mlwq_traits : public ggml::cpu::repack::tensor_traits_base {
  public:
    explicit mlwq_traits(bool packed) : packed(packed) {}

    bool work_size(int /* n_threads */, const ggml_tensor * op, size_t & size) override {
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        size = ggml_row_size(GGML_TYPE_Q8_1, op->src[1]->ne[0]) * ggml_nrows(op->src[1]);
        return true;
    }

    bool compute_forward(ggml_compute_params * params, ggml_tensor * op) override {
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        const ggml_tensor * src0 = op->src[0];
        const ggml_tensor * src1 = op->src[1];
        GGML_ASSERT(src1->type == GGML_TYPE_F32 && src1->nb[0] == sizeof(float));
        GGML_ASSERT(op->type == GGML_TYPE_F32 && op->nb[0] == sizeof(float));
        GGML_ASSERT(ggml_n_dims(src0) == 2 && op->ne[0] == src0->ne[1]);
        char * wdata = (char *) params->wdata;
        mlwq_quantize_src1(params, op, wdata);
        ggml_barrier(params->threadpool);

        const int64_t K    = src0->ne[0] / QK_MLWQ;
        const size_t  nbw1 = ggml_row_size(GGML_TYPE_Q8_1, src1->ne[0]);
        const int64_t ldb  = (int64_t) (nbw1 / sizeof(block_q8_1));
        const int64_t ldc  = (int64_t) (op->nb[1] / sizeof(float));
        for (int64_t i13 = 0; i13 < src1->ne[3]; ++i13) {
            for (int64_t i12 = 0; i12 < src1->ne[2]; ++i12) {
                const char * B = wdata + (i12 + i13*src1->ne[2]) * src1->ne[1] * nbw1;
                float      * C = (float *) ((char *) op->data + i12*op->nb[2] + i13*op->nb[3]);
                if (packed) {
                    ggml_mlwq_x8_gemm(params->ith, params->nth, ggml_mlwq_type_width(src0->type), src0->ne[1],
                                      src1->ne[1], K, src0->data, B, ldb, C, ldc);
                } else {
                    ggml_mlwq_gemm(params->ith, params->nth, src0->ne[1], src1->ne[1], K, src0->data, K, B, ldb,
                                   C, ldc, src0->type, GGML_TYPE_Q8_1, GGML_TYPE_F32);
                }
            }
        }
        return true;
    }

    int repack(ggml_tensor * t, const void * data, size_t data_size) override;

  private:
    const bool packed;
};

mlwq_traits mlwq_packed(true);
mlwq_traits mlwq_rows(false);

int mlwq_traits::repack(ggml_tensor * t, const void * data, size_t data_size) {
    GGML_ASSERT(data_size == ggml_nbytes(t));
    if (!ggml_mlwq_x8_pack(ggml_mlwq_type_width(t->type), t->ne[0], t->ne[1], data, t->data)) {
        memcpy(t->data, data, data_size);
        t->extra = &mlwq_rows;
    }
    return 0;
}

}  // namespace

const ggml::cpu::tensor_traits * ggml_mlwq_repack_traits(const struct ggml_tensor * cur) {
    if (!ggml_mlwq_x8_available() || ggml_n_dims(cur) > 2 || cur->ne[1] % 8 != 0) {
        return nullptr;
    }
    return &mlwq_packed;
}
