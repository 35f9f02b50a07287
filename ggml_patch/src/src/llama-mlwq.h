// MLWQ weights in llama: their column permutations (loaded generically for any architecture,
// checked before use) and the product node that carries them (mlwq ggml_patch).
#pragma once

#include <unordered_map>

struct ggml_context;
struct ggml_tensor;
struct llama_model_loader;

// weight -> its I32 permutation tensor `<base>.mlwq_perm`, for every MLWQ weight of the model
using llama_mlwq_perm_map = std::unordered_map<const ggml_tensor *, ggml_tensor *>;

// Call before the architecture creates its tensors. For every format 3 weight (MLWQb_V3) of the
// file: gives its meta tensor the type it expands to (MLWQb) and its I16 permutation the type I32,
// records both in ml.mlwq_stored, and turns mmap off (the expanded rows are not the file's bytes).
void llama_mlwq_prepare(llama_model_loader & ml);

// load_all_data's hook: if cur was stored in format 3, reads it (with its row scales and widths),
// expands it into cur and returns true; false for every other tensor.
bool llama_mlwq_load_expanded(llama_model_loader & ml, ggml_tensor * cur);

// Call after the architecture has created its tensors and before done_getting_tensors().
// If the file has MLWQ tensors: checks the mlwq.format_version key, and for every MLWQ weight
// checks its shape, its permutation tensor (type, length, range, no repeats) and all its block
// headers (format 3: with its row scales and widths), reading the bytes from the file; creates each
// permutation tensor in the context (buffer type) of its weight and records it in perms. Throws std::runtime_error with a message naming the
// tensor and the fault on any malformed input.
void llama_mlwq_load_tensors(llama_model_loader & ml, llama_mlwq_perm_map & perms);

// w x as a MUL_MAT node; for an MLWQ weight the node carries w's column permutation, and the
// backend permutes the activations as it quantizes them (ggml_mlwq_mul_mat)
ggml_tensor * llama_mlwq_mul_mat(ggml_context * ctx, ggml_tensor * w, ggml_tensor * cur,
                                 const llama_mlwq_perm_map * perms);
