// Inner loops of the MLWQ NEON kernels for ggml_patch/tools/arm_mca.py (llvm-mca), compiled for AArch64.
//
// mlwq_tile_neon (ggml-cpu/mlwq-cpu.c, included here as it is) loops over the 64-column blocks of its
// rows; per block it loads the NC columns' activations, checks the NR headers (same width, codes inside
// the row), branches on the width and runs MLWQ_NEON_ROWS. Its loop holds the code of all eight widths,
// so it is analysed here one width at a time: mca_mlwq_w<W>_<NR>x<NC> is that loop with the same calls
// in the same order, where the branch on the width is a compare with W (a block of another width ends
// the loop, as a corrupt header would). NR x NC: 1x1 is vec_dot (one row, one column), 2x2 vec_dot with
// nrows = 2 (mul_mat on builds without llamafile_sgemm, e.g. i8mm ones), 4x1 the tile ggml_mlwq_gemm
// runs in generation (one column), 4x4 its tile for prompts.
#include "mlwq-cpu.c"

#if !defined(MLWQ_NEON)
#error "arm_mca_kernels.c is for AArch64 builds (the NEON kernel)"
#endif

#define MCA_LOOP(W, NR, NC)                                                                                    \
void mca_mlwq_w##W##_##NR##x##NC(int K, float * s, size_t bs, const uint8_t * x, size_t bx,                   \
                                 const uint8_t * y, size_t by);                                               \
void mca_mlwq_w##W##_##NR##x##NC(int K, float * s, size_t bs, const uint8_t * x, size_t bx,                   \
                                 const uint8_t * y, size_t by) {                                              \
    const size_t row_bytes = ggml_mlwq_row_bytes(K, 8);                                                       \
    const bool pipe = MLWQ_NEON_PIPE(NR, NC);                                                                 \
    size_t off[MLWQ_MR];                                                                                      \
    float32x4_t acc[MLWQ_MR][MLWQ_NC];                                                                        \
    int32x4_t   pend_i = vdupq_n_s32(0);                                                                      \
    float32x4_t pend_s = vdupq_n_f32(0.0f);                                                                   \
    for (int r = 0; r < NR; ++r) {                                                                            \
        off[r] = (size_t) K * GGML_MLWQ_HEADER_SIZE;                                                          \
        for (int c = 0; c < NC; ++c) {                                                                        \
            acc[r][c] = vdupq_n_f32(0.0f);                                                                    \
        }                                                                                                     \
    }                                                                                                         \
    for (int j = 0; j < K; ++j) {                                                                             \
        mlwq_neon_y yv[MLWQ_NC];                                                                              \
        MLWQ_NEON_UNROLL                                                                                      \
        for (int c = 0; c < NC; ++c) {                                                                        \
            yv[c] = mlwq_neon_load_y((const block_q8_1 *) (y + c*by) + 2*j);                                  \
        }                                                                                                     \
        const int w0 = ggml_mlwq_hdr_bits(x + GGML_MLWQ_HEADER_SIZE*j);                                       \
        bool uniform = true;                                                                                  \
        MLWQ_NEON_UNROLL                                                                                      \
        for (int r = 0; r < NR; ++r) {                                                                        \
            uniform = uniform && ggml_mlwq_hdr_bits(x + r*bx + GGML_MLWQ_HEADER_SIZE*j) == w0 &&              \
                      ggml_mlwq_block_readable(w0, off[r], row_bytes);                                        \
        }                                                                                                     \
        if (!uniform || w0 != W) {                                                                            \
            break;                                                                                            \
        }                                                                                                     \
        MLWQ_NEON_ROWS(W, NR, NC, x, bx, j, off, yv, acc, pipe, pend_i, pend_s);                              \
    }                                                                                                         \
    if (pipe) {                                                                                               \
        acc[0][0] = vfmaq_f32(acc[0][0], vcvtq_f32_s32(pend_i), pend_s);                                      \
    }                                                                                                         \
    for (int r = 0; r < NR; ++r) {                                                                            \
        for (int c = 0; c < NC; ++c) {                                                                        \
            s[c*bs + r] = vaddvq_f32(acc[r][c]);                                                              \
        }                                                                                                     \
    }                                                                                                         \
}

#define MCA_WIDTH(W) MCA_LOOP(W, 1, 1) MCA_LOOP(W, 2, 2) MCA_LOOP(W, 4, 1) MCA_LOOP(W, 4, 4)
MCA_WIDTH(1)
MCA_WIDTH(2)
MCA_WIDTH(3)
MCA_WIDTH(4)
MCA_WIDTH(5)
MCA_WIDTH(6)
MCA_WIDTH(7)
MCA_WIDTH(8)
