// MLWQ types, CPU part (see mlwq-cpu.c)
#pragma once

#include "ggml.h"
#include "ggml-backend.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void ggml_vec_dot_mlwq2_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_mlwq3_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_mlwq4_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// the portable loop, whatever the build targets (for tests comparing it with the SIMD path)
GGML_BACKEND_API void ggml_vec_dot_mlwq_q8_1_generic(int n, float * GGML_RESTRICT s, int b, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy);

#ifdef __cplusplus
}
#endif
