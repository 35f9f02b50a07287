// mlwq-fuzz-run: a main() for a libFuzzer target without libFuzzer (for builds that have no
// -fsanitize=fuzzer, e.g. the AArch64 cross-build of ggml_patch/arm_check.sh): runs each input file
// (directories: every file in them, sorted) once through LLVMFuzzerTestOneInput. A failing check
// aborts with the harness's message (FUZZ_FAIL); otherwise the last line is
// "mlwq-fuzz-run: inputs=N ok".
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int * argc, char *** argv);
int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size);

static long long n_inputs = 0;

static void run_file(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(2); }
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t * buf = malloc(n > 0 ? (size_t) n : 1);
    if (n > 0 && fread(buf, 1, (size_t) n, f) != (size_t) n) { fprintf(stderr, "cannot read %s\n", path); exit(2); }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, (size_t) n);
    free(buf);
    n_inputs++;
}

static void run_path(const char * path) {
    struct stat st;
    if (stat(path, &st) != 0) { fprintf(stderr, "cannot stat %s\n", path); exit(2); }
    if (!S_ISDIR(st.st_mode)) {
        run_file(path);
        return;
    }
    struct dirent ** names;
    const int n = scandir(path, &names, NULL, alphasort);
    if (n < 0) { fprintf(stderr, "cannot list %s\n", path); exit(2); }
    for (int i = 0; i < n; ++i) {
        if (names[i]->d_name[0] != '.') {
            char full[4096];
            snprintf(full, sizeof(full), "%s/%s", path, names[i]->d_name);
            run_path(full);
        }
        free(names[i]);
    }
    free(names);
}

int main(int argc, char ** argv) {
    if (argc < 2) { fprintf(stderr, "usage: mlwq-fuzz-run INPUT...\n"); return 2; }
    LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; ++i) {
        run_path(argv[i]);
    }
    printf("mlwq-fuzz-run: inputs=%lld ok\n", n_inputs);
    return 0;
}
