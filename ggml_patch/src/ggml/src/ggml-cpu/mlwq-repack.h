// MLWQ weights in ggml's CPU_REPACK buffer (see mlwq-repack.cpp)
#pragma once

#include "traits.h"

// the CPU_REPACK traits of an MLWQ weight: nullptr where this build has no kernel for repacked rows
// (ggml_mlwq_x8_available), or for a weight that is not 2-D with a multiple of 8 rows
const ggml::cpu::tensor_traits * ggml_mlwq_repack_traits(const struct ggml_tensor * cur);
