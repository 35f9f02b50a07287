// libFuzzer target (b): fuzzed bytes as a GGUF file through ggml's gguf.cpp and then the load-time
// MLWQ checks of llama.cpp.
//
// 1. gguf_init_from_file_ptr on an in-memory FILE (fmemopen): what gguf_init_from_file does after
//    fopen, with the parameters llama_model_loader uses (no_alloc = true, a ggml context of tensor
//    descriptions).
// 2. llama_model_loader's per-tensor step (llama-model-loader.h, llama_tensor_weight): duplicate
//    names refused, data offset = data section + tensor offset, data must lie inside the file.
// 3. llama_mlwq_load_tensors (ggml_patch/src/src/llama-mlwq.cpp), mirrored check for check: it
//    lives in libllama (llama_model_loader, exceptions), so rather than link llama it is restated
//    here over the same ggml-mlwq.h functions it calls (ggml_mlwq_validate_rows on the tensor's
//    bytes, ggml_mlwq_validate_perm on the permutation's), in the same order with the same
//    conditions. Keep the two in step when either changes.
// 4. Then, file accepted or not, the kernels on every row of every MLWQ tensor whose bytes are in
//    the file (mlwq_fuzz_check_row: reference values, exact-size buffers), with activations
//    permuted by the tensor's permutation and quantized to q8_1 as the graph does; for an accepted
//    file also the reference's verdict on every tensor and ggml_validate_row_data (--check-tensors).
// A file that gguf refuses because it holds format version 1's type ids (140..142) gets the verdict
// "refused by gguf_init_from_file: MLWQ format version 1" (gguf's message names the version).
#define GGML_COMMON_DECL_CPP
#include "ggml-common.h"

#include "mlwq_fuzz_common.h"

#include "ggml.h"
#include "ggml-mlwq.h"
#include "ggml-quants.h"
#include "gguf.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerInitialize(int * argc, char *** argv) {
    (void) argc; (void) argv;
    mlwq_fuzz_init();
    return 0;
}

namespace {

struct weight {            // llama_model_loader::llama_tensor_weight
    size_t        offs;
    ggml_tensor * tensor;
};

bool ends_with(const std::string & s, const std::string & suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// llama-mlwq.cpp read_tensor_bytes: a buffer of exactly ggml_nbytes (ASan sees any overread)
std::vector<uint8_t> tensor_bytes(const uint8_t * file, const weight & w) {
    const size_t n = ggml_nbytes(w.tensor);
    return std::vector<uint8_t>(file + w.offs, file + w.offs + n);
}

// llama-mlwq.cpp format_version: "" if the file may be read, else why not; version gets the key's value
std::string format_version_fault(const gguf_context * meta, int64_t & version) {
    const int64_t kid = gguf_find_key(meta, GGML_MLWQ_KEY_FORMAT_VERSION);
    if (kid < 0) {
        return "no mlwq.format_version key";
    }
    version = -1;
    switch (gguf_get_kv_type(meta, kid)) {
        case GGUF_TYPE_UINT32: version = gguf_get_val_u32(meta, kid); break;
        case GGUF_TYPE_INT32:  version = gguf_get_val_i32(meta, kid); break;
        case GGUF_TYPE_UINT64: version = (int64_t) gguf_get_val_u64(meta, kid); break;
        default:
            return std::string("mlwq.format_version has type ") + gguf_type_name(gguf_get_kv_type(meta, kid));
    }
    return version >= GGML_MLWQ_FORMAT_VERSION_MIN && version <= GGML_MLWQ_FORMAT_VERSION
        ? "" : "MLWQ format version " + std::to_string(version);
}

// a format 3 side tensor (row scales, widths): I8 [n]; empty vector and a fault if it is not
std::vector<uint8_t> side_bytes(const uint8_t * file, const std::map<std::string, weight> & weights_map,
                                const std::string & wname, const char * suffix, int64_t n, std::string & fault) {
    const std::string name = wname.substr(0, wname.size() - strlen(".weight")) + "." + suffix;
    const auto it = weights_map.find(name);
    if (it == weights_map.end()) {
        fault = wname + " has no " + name + " tensor";
        return {};
    }
    const ggml_tensor * t = it->second.tensor;
    if (t->type != GGML_TYPE_I8 || ggml_n_dims(t) != 1 || t->ne[0] != n) {
        fault = name + " must be I8 [n]";
        return {};
    }
    return tensor_bytes(file, it->second);
}

// llama_mlwq_load_tensors: "" if the model would load, else the fault (the loader's exception);
// perms gets weight -> its permutation for every weight checked before a fault
std::string mlwq_load_fault(const gguf_context * meta, const uint8_t * file, const std::map<std::string, weight> & weights_map,
                            std::map<std::string, std::string> & perms) {
    const std::string perm_suffix = std::string(".") + GGML_MLWQ_PERM_SUFFIX;
    std::vector<std::string> weights;
    std::set<std::string>    orphans;
    for (const auto & [name, w] : weights_map) {
        if (ggml_mlwq_is_type(w.tensor->type) || ggml_mlwq_is_v3_type(w.tensor->type)) {
            weights.push_back(name);
        } else if (ends_with(name, perm_suffix) || ends_with(name, std::string(".") + GGML_MLWQ_SCALE_SUFFIX) ||
                   ends_with(name, std::string(".") + GGML_MLWQ_BITS_SUFFIX)) {
            orphans.insert(name);
        }
    }
    if (weights.empty() && orphans.empty()) {
        return "";
    }
    // llama_mlwq_prepare: a format 3 weight needs its I16 permutation before anything else
    for (const std::string & name : weights) {
        const ggml_tensor * t = weights_map.at(name).tensor;
        if (!ggml_mlwq_is_v3_type(t->type)) {
            continue;
        }
        if (!ends_with(name, ".weight") || t->ne[0] % QK_MLWQ != 0) {
            return name + " is MLWQ but not a '.weight' tensor";
        }
        const std::string pname = name.substr(0, name.size() - strlen(".weight")) + perm_suffix;
        const auto pit = weights_map.find(pname);
        if (pit == weights_map.end()) {
            return name + " has no column permutation tensor " + pname;
        }
        const ggml_tensor * pt = pit->second.tensor;
        if (pt->type != GGML_TYPE_I16 || ggml_n_dims(pt) != 1 || pt->ne[0] != t->ne[0]) {
            return "permutation " + pname + " of a format 3 weight must be I16 [ne0]";
        }
    }
    int64_t version = -1;
    const std::string version_fault = format_version_fault(meta, version);
    if (!version_fault.empty()) {
        return version_fault;
    }
    char err[512];
    for (const std::string & name : weights) {
        const weight & w = weights_map.at(name);
        const ggml_tensor * t = w.tensor;
        if (!ends_with(name, ".weight")) {
            return name + " is MLWQ but not a '.weight' tensor";
        }
        const bool v3 = ggml_mlwq_is_v3_type(t->type);
        if (v3 != (version == 3)) {
            return name + " has a type of the other MLWQ format version";
        }
        if (t->ne[2] != 1 || t->ne[3] != 1) {
            return name + " is not 2-D";
        }
        if (name == "token_embd.weight") {
            return name + " is a token embedding";
        }
        const std::vector<uint8_t> data = tensor_bytes(file, w);
        if (v3) {
            std::string fault;
            const std::vector<uint8_t> scale = side_bytes(file, weights_map, name, GGML_MLWQ_SCALE_SUFFIX, t->ne[1], fault);
            if (!fault.empty()) {
                return fault;
            }
            const std::vector<uint8_t> bits = side_bytes(file, weights_map, name, GGML_MLWQ_BITS_SUFFIX, t->ne[0] / QK_MLWQ, fault);
            if (!fault.empty()) {
                return fault;
            }
            if (!ggml_mlwq_expand_v3(t->type, data.data(), data.size(), t->ne[0], ggml_nrows(t), scale.data(), bits.data(),
                                     nullptr, err, sizeof(err))) {
                return name + " has invalid data: " + err;
            }
            const std::string base = name.substr(0, name.size() - strlen(".weight")) + ".";
            orphans.erase(base + GGML_MLWQ_SCALE_SUFFIX);
            orphans.erase(base + GGML_MLWQ_BITS_SUFFIX);
        } else if (!ggml_mlwq_validate_rows(t->type, data.data(), data.size(), t->ne[0], ggml_nrows(t), err, sizeof(err))) {
            return name + " has invalid data: " + err;
        }
        const std::string pname = name.substr(0, name.size() - strlen(".weight")) + perm_suffix;
        const auto pit = weights_map.find(pname);
        if (pit == weights_map.end()) {
            return name + " has no column permutation tensor " + pname;
        }
        const ggml_tensor * pt = pit->second.tensor;
        if (!v3 && (pt->type != GGML_TYPE_I32 || ggml_n_dims(pt) != 1 || pt->ne[0] != t->ne[0])) {   // format 3's: above
            return "permutation " + pname + " must be I32 [ne0]";
        }
        const std::vector<uint8_t> pdata = tensor_bytes(file, pit->second);
        const bool perm_ok = v3 ? ggml_mlwq_expand_perm16((const uint16_t *) pdata.data(), pt->ne[0], nullptr, err, sizeof(err))
                                : ggml_mlwq_validate_perm((const int32_t *) pdata.data(), pt->ne[0], err, sizeof(err));
        if (!perm_ok) {
            return "permutation " + pname + " is invalid: " + err;
        }
        orphans.erase(pname);
        if (!v3) {             // the kernels of format 3 rows run on their expansion: format 2's seeds cover them
            perms[name] = pname;
        }
    }
    return orphans.empty() ? "" : "side tensor " + *orphans.begin() + " has no MLWQ weight";
}

float activation(size_t i) {       // a fixed input vector with a few large entries
    uint32_t h = (uint32_t) i * 2654435761u;
    h ^= h >> 15;
    const float v = (float) (h % 2001) / 1000.0f - 1.0f;
    return (h & 0x3f) == 0 ? 100.0f * v : v;
}

void run_kernels(const uint8_t * file, const std::map<std::string, weight> & weights_map,
                 const std::map<std::string, std::string> & perms, bool accepted) {
    for (const auto & [name, w] : weights_map) {
        const ggml_tensor * t = w.tensor;
        if (!ggml_mlwq_is_type(t->type)) {
            continue;
        }
        const int64_t ne0   = t->ne[0];
        const int64_t nrows = ggml_nrows(t);
        const std::vector<uint8_t> data = tensor_bytes(file, w);
        const bool valid = mlwq_fuzz_check_validate(t->type, data.data(), data.size(), ne0, nrows);

        const auto pit = perms.find(name);
        std::vector<uint8_t> pdata;
        if (pit != perms.end()) {
            pdata = tensor_bytes(file, weights_map.at(pit->second));
        }
        // rows only where the tensor's bytes are rows x row size: ggml_nbytes wraps for a huge ne0
        // (ne0 * type_size overflows before the division by the block size), which gguf accepts;
        // the validator refuses such a tensor (checked above), the kernels have no rows to read
        const int b = ggml_mlwq_type_width(t->type);
        const bool rows_fit = nrows > 0 &&
            (unsigned __int128) mlwq_ref_row_bytes(ne0 / QK_MLWQ, b) * (uint64_t) nrows == data.size();
        if (rows_fit) {
            // the activations the graph would give this weight: x[perm[j]], quantized to q8_1
            std::vector<float> x(ne0);
            for (int64_t j = 0; j < ne0; ++j) {
                int32_t src = (int32_t) j;
                if (!pdata.empty()) {
                    memcpy(&src, pdata.data() + 4*j, 4);   // checked: 0 <= src < ne0
                }
                x[j] = activation((size_t) src);
            }
            std::vector<block_q8_1> y(ne0 / QK8_1);
            quantize_row_q8_1_ref(x.data(), y.data(), ne0);
            const size_t row_bytes = data.size() / (size_t) nrows;
            for (int64_t r = 0; r < nrows && r < mlwq_fuzz_max_rows; ++r) {
                mlwq_fuzz_check_row(t->type, data.data() + (size_t) r * row_bytes, ne0, y.data());
            }
        }
        if (accepted) {
            FUZZ_CHECK(valid, "the loader accepted MLWQ tensor %s, the reference refuses it", name.c_str());
            FUZZ_CHECK(pit != perms.end() && mlwq_ref_validate_perm(pdata.data(), ne0),
                       "the loader accepted permutation of %s, the reference refuses it", name.c_str());
            // --check-tensors on the tensor (llama_model_loader::load_all_data)
            FUZZ_CHECK(ggml_validate_row_data(t->type, data.data(), data.size()),
                       "ggml_validate_row_data refuses accepted tensor %s", name.c_str());
        }
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    FUZZ_CHECK(!mlwq_fuzz_selftest, "MLWQ_FUZZ_SELFTEST=1: a deliberate failure (checks that failures are reported)");
    if (size == 0) {
        return 0;
    }
    FILE * f = fmemopen(const_cast<uint8_t *>(data), size, "rb");
    if (f == nullptr) {
        return 0;
    }
    mlwq_fuzz_log_clear();
    ggml_context * ctx = nullptr;
    gguf_init_params params = { /*.no_alloc =*/ true, /*.ctx =*/ &ctx };
    gguf_context * meta = gguf_init_from_file_ptr(f, params);
    fclose(f);
    if (meta == nullptr) {
        FUZZ_CHECK(ctx == nullptr, "gguf refused the file but left a context");
        mlwq_fuzz_verdict(strstr(mlwq_fuzz_log(), "MLWQ format version 1") != nullptr
                              ? "refused by gguf_init_from_file: MLWQ format version 1"
                              : "refused by gguf_init_from_file");
        return 0;
    }

    // llama_model_loader: weights_map, with the bounds check of llama_tensor_weight
    std::map<std::string, weight> weights_map;
    std::string fault;
    for (ggml_tensor * cur = ggml_get_first_tensor(ctx); cur; cur = ggml_get_next_tensor(ctx, cur)) {
        const std::string name = ggml_get_name(cur);
        // gguf refuses duplicate names, but compares them as read (std::string): two names that
        // differ only after an embedded NUL are the same C string in ggml; llama refuses them here
        if (weights_map.find(name) != weights_map.end()) {
            fault = "invalid model: tensor '" + name + "' is duplicated";
            break;
        }
        const int64_t tid = gguf_find_tensor(meta, name.c_str());
        if (tid < 0) {
            fault = "tensor '" + name + "' not found in the model";
            break;
        }
        const size_t offs = gguf_get_data_offset(meta) + gguf_get_tensor_offset(meta, tid);
        const size_t n    = ggml_nbytes(cur);
        if (offs + n < offs || offs + n > size) {
            fault = "tensor " + name + " data is not within the file bounds";   // the model is refused
            continue;
        }
        weights_map.emplace(name, weight{offs, cur});
    }

    std::map<std::string, std::string> perms;
    if (fault.empty()) {
        fault = mlwq_load_fault(meta, data, weights_map, perms);
    }
    run_kernels(data, weights_map, perms, fault.empty());
    mlwq_fuzz_verdict(fault.empty() ? "accepted" : ("refused: " + fault).c_str());

    ggml_free(ctx);
    gguf_free(meta);
    return 0;
}
