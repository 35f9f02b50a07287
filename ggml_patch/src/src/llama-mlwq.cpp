#include "llama-mlwq.h"

#include "llama-impl.h"
#include "llama-model-loader.h"

#include "ggml.h"
#include "ggml-mlwq.h"
#include "gguf.h"

#include <cstring>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

static bool ends_with(const std::string & s, const std::string & suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

static void check_format_version(const llama_model_loader & ml, const std::string & first) {
    const int64_t kid = gguf_find_key(ml.metadata, GGML_MLWQ_KEY_FORMAT_VERSION);
    if (kid < 0) {
        throw std::runtime_error(format("MLWQ: the file has MLWQ tensors ('%s') but no '%s' key: "
            "it was not written by mlwq-export for this patch; re-export it with mlwq-export",
            first.c_str(), GGML_MLWQ_KEY_FORMAT_VERSION));
    }
    int64_t version = -1;
    switch (gguf_get_kv_type(ml.metadata, kid)) {
        case GGUF_TYPE_UINT32: version = gguf_get_val_u32(ml.metadata, kid); break;
        case GGUF_TYPE_INT32:  version = gguf_get_val_i32(ml.metadata, kid); break;
        case GGUF_TYPE_UINT64: version = (int64_t) gguf_get_val_u64(ml.metadata, kid); break;
        default:
            throw std::runtime_error(format("MLWQ: key '%s' has type %s, expected uint32",
                GGML_MLWQ_KEY_FORMAT_VERSION, gguf_type_name(gguf_get_kv_type(ml.metadata, kid))));
    }
    if (version != GGML_MLWQ_FORMAT_VERSION) {
        throw std::runtime_error(format("MLWQ: the file has MLWQ format version %lld, this llama.cpp reads version %d: "
            "re-export the model with the matching mlwq-export, or rebuild llama.cpp with the matching ggml_patch",
            (long long) version, GGML_MLWQ_FORMAT_VERSION));
    }
}

static std::vector<uint8_t> read_tensor_bytes(llama_model_loader & ml, const llama_model_loader::llama_tensor_weight & w) {
    // the loader has checked that offs + nbytes lies inside the file
    std::vector<uint8_t> buf(ggml_nbytes(w.tensor));
    const auto & file = ml.files.at(w.idx);
    file->seek(w.offs, SEEK_SET);
    file->read_raw(buf.data(), buf.size());
    return buf;
}

void llama_mlwq_load_tensors(llama_model_loader & ml, llama_mlwq_perm_map & perms) {
    if (ml.files.empty()) {
        return; // virtual model: no data
    }
    const std::string perm_suffix = std::string(".") + GGML_MLWQ_PERM_SUFFIX;

    std::vector<std::string> weights;
    std::set<std::string>    orphans; // permutation tensors not yet matched to a weight
    for (const auto & [name, w] : ml.weights_map) {
        if (ggml_mlwq_is_type(w.tensor->type)) {
            weights.push_back(name);
        } else if (ends_with(name, perm_suffix)) {
            orphans.insert(name);
        }
    }
    if (weights.empty() && orphans.empty()) {
        return;
    }
    check_format_version(ml, weights.empty() ? *orphans.begin() : weights.front());

    char err[512];
    for (const std::string & name : weights) {
        const auto & w    = ml.weights_map.at(name);
        const ggml_tensor * meta = w.tensor;
        if (!ends_with(name, ".weight")) {
            throw std::runtime_error(format("MLWQ: tensor '%s' has type %s but is not a '.weight' tensor",
                name.c_str(), ggml_type_name(meta->type)));
        }
        if (meta->ne[2] != 1 || meta->ne[3] != 1) {
            throw std::runtime_error(format("MLWQ: tensor '%s' is not 2-D: only linear-layer weights can be MLWQ",
                name.c_str()));
        }
        if (name == "token_embd.weight") {
            throw std::runtime_error(format("MLWQ: tensor '%s' is a token embedding (read by rows): it cannot be MLWQ",
                name.c_str()));
        }
        const std::vector<uint8_t> data = read_tensor_bytes(ml, w);
        if (!ggml_mlwq_validate_rows(meta->type, data.data(), data.size(), meta->ne[0], ggml_nrows(meta), err, sizeof(err))) {
            throw std::runtime_error(format("MLWQ: tensor '%s' (%s, %lld x %lld) has invalid data: %s",
                name.c_str(), ggml_type_name(meta->type), (long long) meta->ne[0], (long long) meta->ne[1], err));
        }

        const std::string pname = name.substr(0, name.size() - strlen(".weight")) + perm_suffix;
        const auto pit = ml.weights_map.find(pname);
        if (pit == ml.weights_map.end()) {
            throw std::runtime_error(format("MLWQ: tensor '%s' has no column permutation tensor '%s'",
                name.c_str(), pname.c_str()));
        }
        const ggml_tensor * pmeta = pit->second.tensor;
        if (pmeta->type != GGML_TYPE_I32 || ggml_n_dims(pmeta) != 1 || pmeta->ne[0] != meta->ne[0]) {
            throw std::runtime_error(format("MLWQ: permutation '%s' must be I32 [%lld] (the weight's ne0), got %s [%lld, %lld]",
                pname.c_str(), (long long) meta->ne[0], ggml_type_name(pmeta->type),
                (long long) pmeta->ne[0], (long long) pmeta->ne[1]));
        }
        const std::vector<uint8_t> pdata = read_tensor_bytes(ml, pit->second);
        if (!ggml_mlwq_validate_perm((const int32_t *) pdata.data(), pmeta->ne[0], err, sizeof(err))) {
            throw std::runtime_error(format("MLWQ: permutation '%s' is invalid: %s", pname.c_str(), err));
        }
        orphans.erase(pname);

        // the permutation goes into the context (buffer type) that holds its weight
        ggml_tensor  * wt   = nullptr;
        ggml_context * wctx = nullptr;
        for (auto & [key, ctx] : ml.ctx_map) {
            if (ggml_tensor * t = ggml_get_tensor(ctx.get(), name.c_str())) {
                wt   = t;
                wctx = ctx.get();
                break;
            }
        }
        if (wt == nullptr) {
            // the architecture did not create this weight: its permutation is unused as well
            LLAMA_LOG_WARN("%s: model has unused tensor %s -- ignoring\n", __func__, pname.c_str());
            ml.size_data -= ggml_nbytes(pmeta);
            ml.n_created++;
            continue;
        }
        ggml_tensor * pt = ggml_dup_tensor(wctx, pmeta);
        ggml_set_name(pt, pname.c_str());
        ml.n_created++;
        perms[wt] = pt;
    }
    if (!orphans.empty()) {
        throw std::runtime_error(format("MLWQ: permutation tensor '%s' has no MLWQ weight '%s.weight'",
            orphans.begin()->c_str(),
            orphans.begin()->substr(0, orphans.begin()->size() - perm_suffix.size()).c_str()));
    }
    LLAMA_LOG_INFO("%s: %zu MLWQ weights, headers and permutations checked (format version %d)\n",
        __func__, weights.size(), GGML_MLWQ_FORMAT_VERSION);
}

ggml_tensor * llama_mlwq_mul_mat(ggml_context * ctx, ggml_tensor * w, ggml_tensor * cur,
                                const llama_mlwq_perm_map * perms) {
    if (!ggml_mlwq_is_type(w->type)) {
        return ggml_mul_mat(ctx, w, cur);
    }
    ggml_tensor * perm = nullptr;
    if (perms != nullptr) {
        const auto it = perms->find(w);
        if (it != perms->end()) {
            perm = it->second;
        }
    }
    if (perm == nullptr) {
        GGML_ABORT("MLWQ weight %s has no column permutation loaded", w->name);
    }
    // the backends gather x[perm[j]] while quantizing the activations (ggml-mlwq.h)
    return ggml_mlwq_mul_mat(ctx, w, cur, perm);
}
