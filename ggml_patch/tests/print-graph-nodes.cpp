// The nodes of llama.cpp's graph for one token, in execution order, with each node's data address
// and size and its sources' addresses: which products are adjacent, and which memory the allocator
// gives to which (CUDA.md: why llama's v and k can share a launch and q cannot). CPU backend.
//
//   L=$(cat ~/.cache/mlwq/llama-cpp-current)/llama_cpp_python-0.3.36/vendor/llama.cpp
//   g++ -O1 -std=c++17 ggml_patch/tests/print-graph-nodes.cpp -I$L/include -I$L/ggml/include \
//       -L$L/build-cpu/bin -lllama -lggml -lggml-base -Wl,-rpath,$L/build-cpu/bin -o /tmp/print-graph-nodes
//   /tmp/print-graph-nodes runs/llamacpp/smollm2-mlwq3.gguf [max nodes, default 40]
#include "llama.h"
#include "ggml.h"

#include <cstdio>
#include <cstdlib>

static int g_seen = 0;
static int g_max  = 40;

// the scheduler asks before each node (ask = true); printing there gives the execution order
static bool print_node(ggml_tensor * t, bool ask, void *) {
    if (!ask) {
        return true;
    }
    if (g_seen < g_max) {
        printf("%3d %-14s %-24s data=%p n=%zu", g_seen, ggml_op_desc(t), t->name, t->data, ggml_nbytes(t));
        for (int s = 0; s < GGML_MAX_SRC; ++s) {
            if (t->src[s]) {
                printf(" | %s %p", t->src[s]->name, t->src[s]->data);
            }
        }
        printf("\n");
    }
    g_seen++;
    return false;   // no need to see the values
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s model.gguf [max nodes]\n", argv[0]);
        return 2;
    }
    if (argc > 2) {
        g_max = atoi(argv[2]);
    }
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (model == nullptr) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx    = 256;
    cp.n_batch  = 1;
    cp.n_ubatch = 1;
    cp.cb_eval  = print_node;
    llama_context * ctx = llama_init_from_model(model, cp);
    llama_token tok = 1;
    const int rc = llama_decode(ctx, llama_batch_get_one(&tok, 1));
    printf("nodes: %d (decode rc %d)\n", g_seen, rc);
    llama_free(ctx);
    llama_model_free(model);
    return rc == 0 ? 0 : 1;
}
