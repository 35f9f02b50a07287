// mlwq-fuzz-run: a main() for a libFuzzer target without libFuzzer (for builds that have no
// -fsanitize=fuzzer, e.g. the AArch64 cross-build of ggml_patch/arm_check.sh): runs each input file
// (directories: every file in them, sorted) once through LLVMFuzzerTestOneInput. A failing check
// aborts with the harness's message (FUZZ_FAIL); otherwise the last line is
// "mlwq-fuzz-run: inputs=N ok".
#include "mlwq-tool-files.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int * argc, char *** argv);
int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size);

static long long n_inputs = 0;

static void run_file(const char * path) {
    size_t n;
    uint8_t * buf = read_file(path, &n);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    n_inputs++;
}

int main(int argc, char ** argv) {
    if (argc < 2) { fprintf(stderr, "usage: mlwq-fuzz-run INPUT...\n"); return 2; }
    LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; ++i) {
        for_each_file(argv[i], run_file);
    }
    printf("mlwq-fuzz-run: inputs=%lld ok\n", n_inputs);
    return 0;
}
