#include "llama-mlwq.h"

#include "llama-impl.h"
#include "llama-model-loader.h"

#include "ggml.h"
#include "ggml-backend.h"
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

static int64_t format_version(const llama_model_loader & ml, const std::string & first) {
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
    if (version < GGML_MLWQ_FORMAT_VERSION_MIN || version > GGML_MLWQ_FORMAT_VERSION) {
        throw std::runtime_error(format("MLWQ: the file has MLWQ format version %lld, this llama.cpp reads versions %d to %d: "
            "re-export the model with the matching mlwq-export, or rebuild llama.cpp with the matching ggml_patch",
            (long long) version, GGML_MLWQ_FORMAT_VERSION_MIN, GGML_MLWQ_FORMAT_VERSION));
    }
    return version;
}

// bytes of a tensor as the file holds it (format 3 tensors have their runtime type in memory)
static size_t file_nbytes(const llama_model_loader & ml, const std::string & name, const ggml_tensor * meta) {
    const auto it = ml.mlwq_stored.find(name);
    if (it == ml.mlwq_stored.end()) {
        return ggml_nbytes(meta);
    }
    return ggml_row_size(it->second, meta->ne[0]) * (size_t) ggml_nrows(meta);
}

static std::vector<uint8_t> read_tensor_bytes(llama_model_loader & ml, const std::string & name) {
    // the loader has checked that offs + the file's bytes lie inside the file
    const auto & w = ml.weights_map.at(name);
    std::vector<uint8_t> buf(file_nbytes(ml, name, w.tensor));
    const auto & file = ml.files.at(w.idx);
    file->seek(w.offs, SEEK_SET);
    file->read_raw(buf.data(), buf.size());
    return buf;
}

static std::string side_name(const std::string & weight, const char * suffix) {
    return weight.substr(0, weight.size() - strlen(".weight")) + "." + suffix;
}

// a format 3 side tensor (row scales or widths): I8 [n]
static std::vector<uint8_t> read_side(llama_model_loader & ml, const std::string & weight, const char * suffix, int64_t n) {
    const std::string name = side_name(weight, suffix);
    const auto it = ml.weights_map.find(name);
    if (it == ml.weights_map.end()) {
        throw std::runtime_error(format("MLWQ: format 3 tensor '%s' has no '%s' tensor", weight.c_str(), name.c_str()));
    }
    const ggml_tensor * meta = it->second.tensor;
    if (meta->type != GGML_TYPE_I8 || ggml_n_dims(meta) != 1 || meta->ne[0] != n) {
        throw std::runtime_error(format("MLWQ: '%s' must be I8 [%lld], got %s [%lld, %lld]", name.c_str(), (long long) n,
            ggml_type_name(meta->type), (long long) meta->ne[0], (long long) meta->ne[1]));
    }
    return read_tensor_bytes(ml, name);
}

// the format 2 rows of a format 3 weight, checked (throws naming the tensor); fill = false only
// checks, without the rows
static std::vector<uint8_t> expanded_rows(llama_model_loader & ml, const std::string & name, const ggml_tensor * meta,
                                          bool fill = true) {
    const ggml_type stored = ml.mlwq_stored.at(name);
    const std::vector<uint8_t> data  = read_tensor_bytes(ml, name);
    const std::vector<uint8_t> scale = read_side(ml, name, GGML_MLWQ_SCALE_SUFFIX, meta->ne[1]);
    const std::vector<uint8_t> bits  = read_side(ml, name, GGML_MLWQ_BITS_SUFFIX, meta->ne[0] / QK_MLWQ);
    std::vector<uint8_t> rows(fill ? ggml_nbytes(meta) : 0);
    char err[512];
    if (!ggml_mlwq_expand_v3(stored, data.data(), data.size(), meta->ne[0], ggml_nrows(meta), scale.data(), bits.data(),
                             fill ? rows.data() : nullptr, err, sizeof(err))) {
        throw std::runtime_error(format("MLWQ: tensor '%s' (%s, %lld x %lld) has invalid data: %s",
            name.c_str(), ggml_type_name(stored), (long long) meta->ne[0], (long long) meta->ne[1], err));
    }
    return rows;
}

static void set_type(ggml_tensor * t, ggml_type type) {
    t->type  = type;
    t->nb[0] = ggml_type_size(type);
    t->nb[1] = t->nb[0] * (t->ne[0] / ggml_blck_size(type));
    for (int i = 2; i < GGML_MAX_DIMS; ++i) {
        t->nb[i] = t->nb[i - 1] * t->ne[i - 1];
    }
}

void llama_mlwq_prepare(llama_model_loader & ml) {
    if (ml.files.empty()) {
        return;
    }
    const std::string perm_suffix = std::string(".") + GGML_MLWQ_PERM_SUFFIX;
    for (auto & [name, w] : ml.weights_map) {
        ggml_tensor * meta = w.tensor;
        if (!ggml_mlwq_is_v3_type(meta->type)) {
            continue;
        }
        if (!ends_with(name, ".weight") || meta->ne[0] % QK_MLWQ != 0) {
            throw std::runtime_error(format("MLWQ: tensor '%s' has type %s but is not a '.weight' tensor",
                name.c_str(), ggml_type_name(meta->type)));
        }
        const std::string pname = side_name(name, GGML_MLWQ_PERM_SUFFIX);
        const auto pit = ml.weights_map.find(pname);
        if (pit == ml.weights_map.end()) {
            throw std::runtime_error(format("MLWQ: tensor '%s' has no column permutation tensor '%s'",
                name.c_str(), pname.c_str()));
        }
        ggml_tensor * pmeta = pit->second.tensor;
        if (pmeta->type != GGML_TYPE_I16 || ggml_n_dims(pmeta) != 1 || pmeta->ne[0] != meta->ne[0]) {
            throw std::runtime_error(format("MLWQ: permutation '%s' of a format 3 weight must be I16 [%lld], got %s [%lld, %lld]",
                pname.c_str(), (long long) meta->ne[0], ggml_type_name(pmeta->type),
                (long long) pmeta->ne[0], (long long) pmeta->ne[1]));
        }
        ml.mlwq_stored[name]  = meta->type;
        ml.mlwq_stored[pname] = GGML_TYPE_I16;
        set_type(meta, ggml_mlwq_v3_runtime_type(meta->type));
        set_type(pmeta, GGML_TYPE_I32);
    }
    if (ml.mlwq_stored.empty()) {
        return;
    }
    if (ml.lazy.mode == LLAMA_LAZY_MODE_ON) {
        throw std::runtime_error("MLWQ: a format 3 file is expanded as it is read and cannot be loaded lazily");
    }
    if (ml.use_mmap) {
        LLAMA_LOG_INFO("%s: MLWQ format 3: block headers are expanded as the file is read, so it is not memory-mapped\n", __func__);
        ml.use_mmap = false;
    }
}

bool llama_mlwq_load_expanded(llama_model_loader & ml, ggml_tensor * cur) {
    if (ml.mlwq_stored.empty()) {
        return false;
    }
    const std::string name = ggml_get_name(cur);
    const auto it = ml.mlwq_stored.find(name);
    if (it == ml.mlwq_stored.end()) {
        return false;
    }
    if (it->second == GGML_TYPE_I16) {
        const std::vector<uint8_t> p16 = read_tensor_bytes(ml, name);
        std::vector<int32_t> perm(cur->ne[0]);
        char err[512];
        if (!ggml_mlwq_expand_perm16((const uint16_t *) p16.data(), cur->ne[0], perm.data(), err, sizeof(err))) {
            throw std::runtime_error(format("MLWQ: permutation '%s' is invalid: %s", name.c_str(), err));
        }
        ggml_backend_tensor_set(cur, perm.data(), 0, ggml_nbytes(cur));
        return true;
    }
    const std::vector<uint8_t> rows = expanded_rows(ml, name, cur);
    ggml_backend_tensor_set(cur, rows.data(), 0, rows.size());
    return true;
}

// the loader's context for the CPU's own buffer type, made as create_tensor makes one if there is none yet
static ggml_context * cpu_context(llama_model_loader & ml, bool lazy) {
    ggml_backend_buffer_type_t buft = ggml_backend_dev_buffer_type(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
    const llama_model_loader::ctx_key key { buft, lazy };
    auto it = ml.ctx_map.find(key);
    if (it == ml.ctx_map.end()) {
        ggml_init_params params = { ggml_tensor_overhead() * (size_t) (ml.n_tensors + 1), nullptr, true };
        ggml_context * ctx = ggml_init(params);
        if (!ctx) {
            throw std::runtime_error("failed to create ggml context");
        }
        it = ml.ctx_map.emplace(key, ctx).first;
    }
    return it->second.get();
}

void llama_mlwq_load_tensors(llama_model_loader & ml, llama_mlwq_perm_map & perms) {
    if (ml.files.empty()) {
        return; // virtual model: no data
    }
    const std::string perm_suffix  = std::string(".") + GGML_MLWQ_PERM_SUFFIX;
    const std::string scale_suffix = std::string(".") + GGML_MLWQ_SCALE_SUFFIX;
    const std::string bits_suffix  = std::string(".") + GGML_MLWQ_BITS_SUFFIX;

    std::vector<std::string> weights;
    std::set<std::string>    orphans; // side tensors not yet matched to a weight
    for (const auto & [name, w] : ml.weights_map) {
        if (ggml_mlwq_is_type(w.tensor->type)) {
            weights.push_back(name);
        } else if (ends_with(name, perm_suffix) || ends_with(name, scale_suffix) || ends_with(name, bits_suffix)) {
            orphans.insert(name);
        }
    }
    if (weights.empty() && orphans.empty()) {
        return;
    }
    const int64_t version = format_version(ml, weights.empty() ? *orphans.begin() : weights.front());

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
        const bool stored_v3 = ml.mlwq_stored.count(name) > 0;
        if (stored_v3 != (version == 3)) {
            throw std::runtime_error(format("MLWQ: tensor '%s' has type %s in a file of MLWQ format version %lld",
                name.c_str(), ggml_type_name(stored_v3 ? ml.mlwq_stored.at(name) : meta->type), (long long) version));
        }
        if (stored_v3) {
            expanded_rows(ml, name, meta, false);   // every check of the expansion, before any buffer is filled
            orphans.erase(side_name(name, GGML_MLWQ_SCALE_SUFFIX));
            orphans.erase(side_name(name, GGML_MLWQ_BITS_SUFFIX));
        } else {
            const std::vector<uint8_t> data = read_tensor_bytes(ml, name);
            if (!ggml_mlwq_validate_rows(meta->type, data.data(), data.size(), meta->ne[0], ggml_nrows(meta), err, sizeof(err))) {
                throw std::runtime_error(format("MLWQ: tensor '%s' (%s, %lld x %lld) has invalid data: %s",
                    name.c_str(), ggml_type_name(meta->type), (long long) meta->ne[0], (long long) meta->ne[1], err));
            }
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
        const std::vector<uint8_t> pdata = read_tensor_bytes(ml, pname);
        const bool perm_ok = stored_v3
            ? ggml_mlwq_expand_perm16((const uint16_t *) pdata.data(), pmeta->ne[0], nullptr, err, sizeof(err))
            : ggml_mlwq_validate_perm((const int32_t *) pdata.data(), pmeta->ne[0], err, sizeof(err));
        if (!perm_ok) {
            throw std::runtime_error(format("MLWQ: permutation '%s' is invalid: %s", pname.c_str(), err));
        }
        orphans.erase(pname);
        if (stored_v3) {        // its row scales and widths are read by the expansion: no tensors of their own
            for (const char * suffix : { GGML_MLWQ_SCALE_SUFFIX, GGML_MLWQ_BITS_SUFFIX }) {
                ml.size_data -= ggml_nbytes(ml.weights_map.at(side_name(name, suffix)).tensor);
                ml.n_created++;
            }
        }

        // the permutation goes into the context (buffer type) that holds its weight, except an extra CPU
        // buffer's (CPU_REPACK: its tensors are laid out by their type's traits): then the CPU's own
        ggml_tensor  * wt   = nullptr;
        ggml_context * wctx = nullptr;
        for (auto & [key, ctx] : ml.ctx_map) {
            if (ggml_tensor * t = ggml_get_tensor(ctx.get(), name.c_str())) {
                wt   = t;
                wctx = ctx.get();
                if (ggml_backend_dev_t dev = ggml_backend_buft_get_device(key.buft);
                        dev && ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU && !ggml_backend_buft_is_host(key.buft)) {
                    wctx = cpu_context(ml, key.lazy);
                }
                break;
            }
        }
        if (wt == nullptr) {
            // the architecture did not create this weight: its permutation is unused as well
            LLAMA_LOG_WARN("%s: model has unused tensor %s -- ignoring\n", __func__, pname.c_str());
            ml.size_data -= ggml_nbytes(pmeta);
            ml.n_created++;
            ml.mlwq_stored.erase(pname);
            continue;
        }
        ggml_tensor * pt = ggml_dup_tensor(wctx, pmeta);
        ggml_set_name(pt, pname.c_str());
        ml.n_created++;
        perms[wt] = pt;
    }
    if (!orphans.empty()) {
        const std::string & o = *orphans.begin();
        throw std::runtime_error(format("MLWQ: tensor '%s' has no MLWQ weight '%s.weight'",
            o.c_str(), o.substr(0, o.rfind('.')).c_str()));
    }
    LLAMA_LOG_INFO("%s: %zu MLWQ weights, headers and permutations checked (format version %lld%s)\n",
        __func__, weights.size(), (long long) version, version == 3 ? ", expanded to format 2 rows as read" : "");
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
