// The MLWQ ggml type named on a check program's command line (mlwq-check, mlwq-exact): exits
// with status 2 and a one-line message for any other name. Needs ggml.h and ggml-mlwq.h.
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum ggml_type parse_type(const char * name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char * n = ggml_type_name((enum ggml_type) t);
        if (n && strcmp(n, name) == 0 && (ggml_mlwq_is_type((enum ggml_type) t) || ggml_mlwq_is_v3_type((enum ggml_type) t))) {
            return (enum ggml_type) t;
        }
    }
    fprintf(stderr, "not an MLWQ type: %s\n", name);
    exit(2);
}
