"""Experiment for device_cuda_checks.sh permfast: one-token activation permutation as one GET_ROWS."""
import sys

p = sys.argv[1]
s = open(p).read()
a = "    const bool is_2d = cur->ne[2] == 1 && cur->ne[3] == 1;"
b = """    if (ggml_nelements(cur) == cur->ne[0] && ggml_is_contiguous(cur)) {
        ggml_tensor * x1 = ggml_get_rows(ctx, ggml_reshape_2d(ctx, cur, 1, cur->ne[0]), perm);
        return ggml_reshape_4d(ctx, x1, cur->ne[0], cur->ne[1], cur->ne[2], cur->ne[3]);
    }
"""
assert a in s, "llama-mlwq.cpp changed: update permfast_edit.py"
open(p, "w").write(s.replace(a, b + a))
