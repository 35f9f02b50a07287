// MLWQ weights in llama: their column permutations (loaded generically for any architecture,
// checked before use) and the product node that carries them (mlwq ggml_patch).
#pragma once

#include <unordered_map>

struct ggml_context;
struct ggml_tensor;
struct llama_model_loader;

// weight -> its I32 permutation tensor `<base>.mlwq_perm`, for every MLWQ weight of the model
using llama_mlwq_perm_map = std::unordered_map<const ggml_tensor *, ggml_tensor *>;

// Call after the architecture has created its tensors and before done_getting_tensors().
// If the file has MLWQ tensors: checks the mlwq.format_version key, and for every MLWQ weight
// checks its shape, its permutation tensor (type, length, range, no repeats) and all its block
// headers, reading the bytes from the file; creates each permutation tensor in the context (buffer
// type) of its weight and records it in perms. Throws std::runtime_error with a message naming the
// tensor and the fault on any malformed input.
void llama_mlwq_load_tensors(llama_model_loader & ml, llama_mlwq_perm_map & perms);

// w x as a MUL_MAT node; for an MLWQ weight the node carries w's column permutation, and the
// backend permutes the activations as it quantizes them (ggml_mlwq_mul_mat)
ggml_tensor * llama_mlwq_mul_mat(ggml_context * ctx, ggml_tensor * w, ggml_tensor * cur,
                                 const llama_mlwq_perm_map * perms);
