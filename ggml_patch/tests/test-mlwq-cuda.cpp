// test-mlwq-cuda: the MLWQ CUDA kernels against references, and their speed.
//
//   test-mlwq-cuda            correctness: every case below on the CUDA backend, compared with
//                             (a) the CPU's to_float of the same bytes and double-precision
//                             products, and (b) the CPU backend running the same graph
//   test-mlwq-cuda --bench    mat-vec speed on Llama-3.2-1B shapes, MLWQ3 vs Q3_K/Q4_0/Q8_0
//   test-mlwq-cuda --bench mlwq   the same, MLWQ3 only
//
// MLWQ rows are packed here by an independent writer of ggml_patch/FORMAT.md, format version 2
// (2-byte headers [u8 scale code s][u8 zero | (bits - 1) << 5], d = 2^(s/8 - 20); random widths
// 1..8, random codes, scale codes and zero points), so the test also checks the C and CUDA readers
// against the written format. Ends with "test-mlwq-cuda: N/M cases passed" (exit 0 only if all pass).

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml-cuda.h"
#include "ggml-mlwq.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

static std::mt19937_64 g_rng(1234);

static int   rnd_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g_rng); }
static float rnd_f(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(g_rng); }

// ---- an independent MLWQ writer (FORMAT.md, format version 2) ----

static const int HDR = 2;   // bytes of a block header

// header of block j of a row: scale code s (d = 2^(s/8 - 20)), zero point (0..31, <= 2^bits - 1), width 1..8
static void put_header(uint8_t * row, int64_t j, int s, int zero, int bits) {
    row[HDR*j]     = (uint8_t) s;
    row[HDR*j + 1] = (uint8_t) ((zero & 31) | ((bits - 1) << 5));
}

// width 8 for block j of a row, its zero point kept (a header whose codes may end past the row)
static void set_width8(uint8_t * row, int64_t j) {
    row[HDR*j + 1] = (uint8_t) ((row[HDR*j + 1] & 31) | (7 << 5));
}

// the scale code nearest to d (d in 2^-20 .. 2^11.875)
static int scale_code(float d) {
    const int s = (int) std::lround(8.0 * (std::log2((double) d) + 20.0));
    return std::min(255, std::max(0, s));
}

static void pack_block(uint8_t * out, int bits, const uint8_t * q) {
    int shift = 0;
    int rest  = bits;
    while (rest > 0) {
        const int p      = rest >= 4 ? 4 : rest >= 2 ? 2 : 1;
        const int nbytes = 8*p;
        const int per    = 8/p;
        for (int i = 0; i < nbytes; ++i) {
            int byte = 0;
            for (int kk = 0; kk < per; ++kk) {
                byte |= ((q[i + kk*nbytes] >> shift) & ((1 << p) - 1)) << (kk*p);
            }
            out[i] = (uint8_t) byte;
        }
        out   += nbytes;
        shift += p;
        rest  -= p;
    }
}

enum width_mode { WIDTHS_TIERS, WIDTHS_WILD };

// widths of one row's K blocks, sum <= K*b: tiers (b-1, b, b+1 in runs, as the exporter makes
// them) or wild (any of 1..8)
static std::vector<int> make_widths(int K, int b, width_mode mode) {
    std::vector<int> w(K);
    if (mode == WIDTHS_TIERS) {
        const int n_lo = K/3, n_hi = K/3;
        for (int j = 0; j < K; ++j) {
            w[j] = j < n_lo ? b - 1 : j < K - n_hi ? b : b + 1;
        }
    } else {
        for (int j = 0; j < K; ++j) {
            w[j] = rnd_int(1, 8);
        }
        int sum = 0;
        for (int x : w) sum += x;
        while (sum > K*b) {
            const int j = rnd_int(0, K - 1);
            if (w[j] > 1) { w[j]--; sum--; }
        }
    }
    return w;
}

// nrows rows of MLWQb with ne0 columns
static std::vector<uint8_t> make_mlwq(int b, int64_t ne0, int64_t nrows, width_mode mode) {
    const int64_t K  = ne0/QK_MLWQ;
    const size_t  rb = (size_t) K*(HDR + 8*b);
    std::vector<uint8_t> data(rb*nrows, 0);
    std::vector<int> w = make_widths((int) K, b, mode);
    uint8_t q[QK_MLWQ];
    for (int64_t r = 0; r < nrows; ++r) {
        if (mode == WIDTHS_WILD && r % 3 == 0) {
            w = make_widths((int) K, b, mode); // rows need not share widths
        }
        uint8_t * row = data.data() + r*rb;
        size_t off = (size_t) K*HDR;
        for (int64_t j = 0; j < K; ++j) {
            const int bits = w[j];
            const int s    = scale_code(rnd_f(0.002f, 0.05f) / (float) (1 << (bits - 1)));
            const int zero = rnd_int(0, std::min((1 << bits) - 1, 31));
            put_header(row, j, s, zero, bits);
            for (int i = 0; i < QK_MLWQ; ++i) {
                q[i] = (uint8_t) rnd_int(0, (1 << bits) - 1);
            }
            pack_block(row + off, bits, q);
            off += 8*(size_t) bits;
        }
    }
    return data;
}

static ggml_type mlwq_type(int b) {
    return b == 2 ? GGML_TYPE_MLWQ2 : b == 3 ? GGML_TYPE_MLWQ3 : GGML_TYPE_MLWQ4;
}

// weights as floats through the CPU's to_float, one row at a time
static std::vector<float> dequant(ggml_type type, const std::vector<uint8_t> & data, int64_t ne0, int64_t nrows) {
    std::vector<float> out(ne0*nrows);
    const size_t rb = ggml_row_size(type, ne0);
    for (int64_t r = 0; r < nrows; ++r) {
        ggml_get_type_traits(type)->to_float(data.data() + r*rb, out.data() + r*ne0, ne0);
    }
    return out;
}

// a random column permutation of n columns
static std::vector<int32_t> rand_perm(int64_t n) {
    std::vector<int32_t> perm(n);
    for (int64_t j = 0; j < n; ++j) perm[j] = (int32_t) j;
    std::shuffle(perm.begin(), perm.end(), g_rng);
    return perm;
}

// x in a weight's column order: nc columns of perm.size() values, column c of x starting at c*ld
// (ld = 0: perm.size()); y[c][j] = x[c][perm[j]]
static std::vector<float> permute_cols(const std::vector<float> & x, const std::vector<int32_t> & perm,
                                       int64_t nc = 1, int64_t ld = 0) {
    const int64_t ne0 = (int64_t) perm.size();
    ld = ld ? ld : ne0;
    std::vector<float> y(ne0*nc);
    for (int64_t c = 0; c < nc; ++c) {
        for (int64_t j = 0; j < ne0; ++j) y[c*ne0 + j] = x[c*ld + perm[j]];
    }
    return y;
}

static std::vector<float> rand_vec(size_t n, float scale = 1.0f) {
    std::vector<float> v(n);
    for (auto & x : v) x = rnd_f(-scale, scale);
    return v;
}

// ---- graph running ----

struct input { ggml_tensor * t; const void * data; };
using builder = std::function<ggml_tensor * (ggml_context *, std::vector<input> &)>;

static std::vector<float> run(ggml_backend_t be, const builder & build, bool check_support, bool & supported) {
    ggml_init_params ip = { 512*ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(ip);
    std::vector<input> ins;
    ggml_tensor * out = build(ctx, ins);
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    supported = true;
    if (check_support) {
        for (int i = 0; i < ggml_graph_n_nodes(gf); ++i) {
            ggml_tensor * node = ggml_graph_node(gf, i);
            if (!ggml_backend_supports_op(be, node)) {
                printf("    %s does not support %s (%s)\n", ggml_backend_name(be), ggml_op_desc(node), node->name);
                supported = false;
            }
        }
    }
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    for (auto & in : ins) {
        ggml_backend_tensor_set(in.t, in.data, 0, ggml_nbytes(in.t));
    }
    ggml_backend_graph_compute(be, gf);
    std::vector<float> res(ggml_nelements(out));
    GGML_ASSERT(out->type == GGML_TYPE_F32 && ggml_is_contiguous(out));
    ggml_backend_tensor_get(out, res.data(), 0, ggml_nbytes(out));
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    return res;
}

static double nmse(const std::vector<float> & a, const std::vector<double> & ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        if (!std::isfinite(a[i])) return INFINITY;
        num += (a[i] - ref[i])*(a[i] - ref[i]);
        den += ref[i]*ref[i];
    }
    return den > 0 ? num/den : num;
}

// Tolerances (NMSE). Mat-vec (<= 8 columns) quantizes the activations to q8_1 on both backends:
// about 1e-5 from the exact product each, and the two differ by as much, because the CPU takes
// the zero-point term from the sum of the quantized activations and CUDA from q8_1's stored sum
// of the floats (first H100 run: up to 1.8e-4 from ref, 2.0e-4 from CPU, for SwiGLU). 5e-4 is
// test-backend-ops' tolerance for MUL_MAT. Wider products dequantize to f16 for cuBLAS on CUDA
// (observed <= 1e-6 from ref), while the CPU still uses q8_1 (observed <= 1.8e-5 between them).
// MUL_MAT_ID above the mat-vec batch splits tokens per expert, which can land on the mat-vec path.
static const double TOL_Q8_REF  = 5e-4, TOL_Q8_CPU  = 1e-3;
static const double TOL_F16_REF = 2e-5, TOL_F16_CPU = 1e-4;

static ggml_backend_t g_cuda = nullptr;
static ggml_backend_t g_cpu  = nullptr;
static int g_pass = 0, g_total = 0;

// run on CUDA and CPU, compare both with ref
static void check(const std::string & name, const builder & build, const std::vector<double> & ref,
                  double tol_ref, double tol_cpu) {
    bool sup_cuda = false, sup_cpu = false;
    const std::vector<float> r_cuda = run(g_cuda, build, true,  sup_cuda);
    const std::vector<float> r_cpu  = run(g_cpu,  build, false, sup_cpu);
    std::vector<double> cpu_d(r_cpu.begin(), r_cpu.end());
    const double e_ref = nmse(r_cuda, ref);
    const double e_cpu = nmse(r_cuda, cpu_d);
    const bool ok = sup_cuda && e_ref <= tol_ref && e_cpu <= tol_cpu;
    g_total++;
    g_pass += ok;
    printf("  [%s] %-58s nmse(ref) %.2e (tol %.0e)  nmse(cpu) %.2e (tol %.0e)%s\n", ok ? " ok " : "FAIL",
           name.c_str(), e_ref, tol_ref, e_cpu, tol_cpu, sup_cuda ? "" : "  NOT SUPPORTED");
}

// ref[c, i] = sum_k w[i, k] * x[c, k]
static std::vector<double> ref_mm(const std::vector<float> & w, const std::vector<float> & x, int64_t ne0, int64_t nr, int64_t nc) {
    std::vector<double> out(nr*nc);
    for (int64_t c = 0; c < nc; ++c) {
        for (int64_t i = 0; i < nr; ++i) {
            double s = 0;
            for (int64_t k = 0; k < ne0; ++k) s += (double) w[i*ne0 + k]*x[c*ne0 + k];
            out[c*nr + i] = s;
        }
    }
    return out;
}

// W (nr x ne0 MLWQ rows wq) times nc random columns, against the product of W's to_float
static void check_mul_mat(const char * name, ggml_type type, int64_t ne0, int64_t nr, int64_t nc,
                          const std::vector<uint8_t> & wq) {
    const auto w  = dequant(type, wq, ne0, nr);
    const auto x  = rand_vec(ne0*nc);
    const auto ref = ref_mm(w, x, ne0, nr, nc);
    builder bld = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tw = ggml_new_tensor_2d(ctx, type, ne0, nr);
        ggml_tensor * tx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, nc);
        ins.push_back({tw, wq.data()});
        ins.push_back({tx, x.data()});
        return ggml_mul_mat(ctx, tw, tx);
    };
    // q8_1 activations on both sides for <= 8 columns; f16 cuBLAS beyond
    check(name, bld, ref, nc <= 8 ? TOL_Q8_REF : TOL_F16_REF, nc <= 8 ? TOL_Q8_CPU : TOL_F16_CPU);
}

static void test_mul_mat(int b, int64_t ne0, int64_t nr, int64_t nc, width_mode mode) {
    const ggml_type type = mlwq_type(b);
    const auto wq = make_mlwq(b, ne0, nr, mode);
    char name[128];
    snprintf(name, sizeof(name), "mul_mat %s %lldx%lld x %lld cols (%s)", ggml_type_name(type),
             (long long) nr, (long long) ne0, (long long) nc, mode == WIDTHS_TIERS ? "tiers" : "widths 1..8");
    check_mul_mat(name, type, ne0, nr, nc, wq);
}

// the product node of an MLWQ layer in llama: ggml_mlwq_mul_mat with the weight's column
// permutation, x in the original column order (rows of x padded: a non-contiguous src1 when pad > 0)
static void test_mul_mat_perm(int b, int64_t ne0, int64_t nr, int64_t nc, int64_t pad) {
    const ggml_type type = mlwq_type(b);
    const auto wq = make_mlwq(b, ne0, nr, WIDTHS_TIERS);
    const auto w  = dequant(type, wq, ne0, nr);
    const auto perm = rand_perm(ne0);
    const int64_t ld = ne0 + pad;
    const auto x = rand_vec(ld*nc);
    const auto ref = ref_mm(w, permute_cols(x, perm, nc, ld), ne0, nr, nc);
    builder bld = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tw = ggml_new_tensor_2d(ctx, type, ne0, nr);
        ggml_tensor * tp = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, ne0);
        ggml_tensor * tx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ld, nc);
        ins.push_back({tw, wq.data()});
        ins.push_back({tp, perm.data()});
        ins.push_back({tx, x.data()});
        ggml_tensor * xv = pad ? ggml_view_2d(ctx, tx, ne0, nc, tx->nb[1], 0) : tx;
        return ggml_mlwq_mul_mat(ctx, tw, xv, tp);
    };
    char name[128];
    snprintf(name, sizeof(name), "mul_mat permuted %s %lldx%lld x %lld cols%s", ggml_type_name(type),
             (long long) nr, (long long) ne0, (long long) nc, pad ? " (strided x)" : "");
    check(name, bld, ref, nc <= 8 ? TOL_Q8_REF : TOL_F16_REF, nc <= 8 ? TOL_Q8_CPU : TOL_F16_CPU);
}

// 4-D broadcast: w [ne0, nr, 2, 1], x [ne0, nc, 4, 2]
static void test_mul_mat_batched(int b, int64_t ne0, int64_t nr, int64_t nc) {
    const ggml_type type = mlwq_type(b);
    const int64_t ne02 = 2, ne12 = 4, ne13 = 2;
    const auto wq = make_mlwq(b, ne0, nr*ne02, WIDTHS_WILD);
    const auto w  = dequant(type, wq, ne0, nr*ne02);
    const auto x  = rand_vec(ne0*nc*ne12*ne13);
    std::vector<double> ref(nr*nc*ne12*ne13);
    for (int64_t i3 = 0; i3 < ne13; ++i3) {
        for (int64_t i2 = 0; i2 < ne12; ++i2) {
            const int64_t wch = i2/(ne12/ne02);
            std::vector<float> ws(w.begin() + wch*nr*ne0, w.begin() + (wch + 1)*nr*ne0);
            std::vector<float> xs(x.begin() + ((i3*ne12 + i2)*nc)*ne0, x.begin() + ((i3*ne12 + i2 + 1)*nc)*ne0);
            const auto r = ref_mm(ws, xs, ne0, nr, nc);
            std::copy(r.begin(), r.end(), ref.begin() + (i3*ne12 + i2)*nr*nc);
        }
    }
    builder bld = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tw = ggml_new_tensor_3d(ctx, type, ne0, nr, ne02);
        ggml_tensor * tx = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, ne0, nc, ne12, ne13);
        ins.push_back({tw, wq.data()});
        ins.push_back({tx, x.data()});
        return ggml_mul_mat(ctx, tw, tx);
    };
    char name[128];
    snprintf(name, sizeof(name), "mul_mat batched %s [%lld,%lld,2] x [%lld,4,2]", ggml_type_name(type),
             (long long) nr, (long long) ne0, (long long) nc);
    check(name, bld, ref, nc <= 8 ? TOL_Q8_REF : TOL_F16_REF, nc <= 8 ? TOL_Q8_CPU : TOL_F16_CPU);
}

// a non-contiguous weight: every other row of a larger tensor (cuBLAS nc dequantization, mmvq strides)
static void test_mul_mat_view(int b, int64_t ne0, int64_t nr, int64_t nc) {
    const ggml_type type = mlwq_type(b);
    const auto wq = make_mlwq(b, ne0, 2*nr, WIDTHS_WILD);
    const auto wall = dequant(type, wq, ne0, 2*nr);
    std::vector<float> w(nr*ne0);
    for (int64_t i = 0; i < nr; ++i) std::copy(wall.begin() + 2*i*ne0, wall.begin() + (2*i + 1)*ne0, w.begin() + i*ne0);
    const auto x = rand_vec(ne0*nc);
    const auto ref = ref_mm(w, x, ne0, nr, nc);
    builder bld = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tw = ggml_new_tensor_2d(ctx, type, ne0, 2*nr);
        ggml_tensor * tx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, nc);
        ins.push_back({tw, wq.data()});
        ins.push_back({tx, x.data()});
        ggml_tensor * v = ggml_view_2d(ctx, tw, ne0, nr, 2*tw->nb[1], 0);
        return ggml_mul_mat(ctx, v, tx);
    };
    char name[128];
    snprintf(name, sizeof(name), "mul_mat strided view %s %lldx%lld x %lld cols", ggml_type_name(type),
             (long long) nr, (long long) ne0, (long long) nc);
    check(name, bld, ref, nc <= 8 ? TOL_Q8_REF : TOL_F16_REF, nc <= 8 ? TOL_Q8_CPU : TOL_F16_CPU);
}

static void test_get_rows(int b, int64_t ne0, int64_t nr, int64_t n_idx, bool corrupt) {
    const ggml_type type = mlwq_type(b);
    auto wq = make_mlwq(b, ne0, nr, WIDTHS_WILD);
    if (corrupt) {
        // widths 8 make the codes end past the row (the only corrupt header of format version 2)
        const size_t rb = ggml_row_size(type, ne0);
        for (int64_t j = 2; j < ne0/QK_MLWQ; ++j) set_width8(wq.data() + 1*rb, j);  // row 1: from block 2 on
        for (int64_t j = 1; j < ne0/QK_MLWQ; j += 2) set_width8(wq.data() + 2*rb, j); // row 2: every other block from 1
        for (int64_t j = 0; j < ne0/QK_MLWQ; ++j) set_width8(wq.data() + 3*rb, j);  // row 3: every block
    }
    const auto w = dequant(type, wq, ne0, nr);
    std::vector<int32_t> idx(n_idx);
    for (auto & i : idx) i = rnd_int(0, (int) nr - 1);
    if (corrupt) { idx[0] = 1; idx[1] = 2; idx[2] = 3; }
    std::vector<double> ref(n_idx*ne0);
    for (int64_t r = 0; r < n_idx; ++r) for (int64_t k = 0; k < ne0; ++k) ref[r*ne0 + k] = w[idx[r]*ne0 + k];
    builder bld = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tw = ggml_new_tensor_2d(ctx, type, ne0, nr);
        ggml_tensor * ti = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_idx);
        ins.push_back({tw, wq.data()});
        ins.push_back({ti, idx.data()});
        return ggml_get_rows(ctx, tw, ti);
    };
    char name[128];
    snprintf(name, sizeof(name), "get_rows %s %lld of %lldx%lld%s", ggml_type_name(type), (long long) n_idx,
             (long long) nr, (long long) ne0, corrupt ? " (corrupt headers)" : "");
    check(name, bld, ref, 1e-12, 1e-12);
}

static void test_corrupt_mul_mat(int b, int64_t ne0, int64_t nr, int64_t nc) {
    const ggml_type type = mlwq_type(b);
    auto wq = make_mlwq(b, ne0, nr, WIDTHS_WILD);
    const size_t rb = ggml_row_size(type, ne0);
    const int64_t K = ne0/QK_MLWQ;
    // widths 8 make the codes end past the row (the only corrupt header of format version 2)
    for (int64_t r = 0; r < nr; r += 5) {
        uint8_t * row = wq.data() + r*rb;
        switch ((r/5) % 3) {
            case 0: for (int64_t j = r % K; j < K; ++j) set_width8(row, j); break; // from block r % K on
            case 1: for (int64_t j = r % K; j < K; j += 2) set_width8(row, j); break; // every other block
            case 2: for (int64_t j = 0; j < K; ++j) set_width8(row, j); break;     // every block
        }
    }
    char name[128];
    snprintf(name, sizeof(name), "mul_mat %s %lldx%lld x %lld cols, corrupt headers", ggml_type_name(type),
             (long long) nr, (long long) ne0, (long long) nc);
    check_mul_mat(name, type, ne0, nr, nc, wq);
}

// mul_mat_id: w [ne0, nr, n_exp], x [ne0, n_used, n_tok], ids [n_used, n_tok]
static void test_mul_mat_id(int b, int64_t ne0, int64_t nr, int n_exp, int n_used, int n_tok) {
    const ggml_type type = mlwq_type(b);
    const auto wq = make_mlwq(b, ne0, nr*n_exp, WIDTHS_TIERS);
    const auto w  = dequant(type, wq, ne0, nr*n_exp);
    const auto x  = rand_vec(ne0*n_used*n_tok);
    std::vector<int32_t> ids(n_used*n_tok);
    for (int t = 0; t < n_tok; ++t) {
        std::vector<int> e(n_exp);
        for (int i = 0; i < n_exp; ++i) e[i] = i;
        std::shuffle(e.begin(), e.end(), g_rng);
        for (int u = 0; u < n_used; ++u) ids[t*n_used + u] = e[u];
    }
    std::vector<double> ref(nr*n_used*n_tok);
    for (int t = 0; t < n_tok; ++t) for (int u = 0; u < n_used; ++u) {
        const int e = ids[t*n_used + u];
        for (int64_t i = 0; i < nr; ++i) {
            double s = 0;
            for (int64_t k = 0; k < ne0; ++k) s += (double) w[(e*nr + i)*ne0 + k]*x[(t*n_used + u)*ne0 + k];
            ref[(t*n_used + u)*nr + i] = s;
        }
    }
    builder bld = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tw = ggml_new_tensor_3d(ctx, type, ne0, nr, n_exp);
        ggml_tensor * tx = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, ne0, n_used, n_tok);
        ggml_tensor * ti = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, n_used, n_tok);
        ins.push_back({tw, wq.data()});
        ins.push_back({tx, x.data()});
        ins.push_back({ti, ids.data()});
        return ggml_mul_mat_id(ctx, tw, tx, ti);
    };
    char name[128];
    snprintf(name, sizeof(name), "mul_mat_id %s %d experts, %d used, %d tokens", ggml_type_name(type), n_exp, n_used, n_tok);
    check(name, bld, ref, TOL_Q8_REF, TOL_Q8_CPU);
}

// fused epilogues of the mat-vec path: + bias, and swiglu(gate, up)
static void test_fusion(int b, int64_t ne0, int64_t nr) {
    const ggml_type type = mlwq_type(b);
    const auto uq = make_mlwq(b, ne0, nr, WIDTHS_TIERS);
    const auto gq = make_mlwq(b, ne0, nr, WIDTHS_WILD);
    const auto u  = dequant(type, uq, ne0, nr);
    const auto g  = dequant(type, gq, ne0, nr);
    const auto x  = rand_vec(ne0);
    const auto bias = rand_vec(nr);
    const auto ru = ref_mm(u, x, ne0, nr, 1);
    const auto rg = ref_mm(g, x, ne0, nr, 1);
    std::vector<double> ref_bias(nr), ref_glu(nr);
    for (int64_t i = 0; i < nr; ++i) {
        ref_bias[i] = ru[i] + bias[i];
        ref_glu[i]  = rg[i]/(1.0 + std::exp(-rg[i]))*ru[i];
    }
    builder bld_bias = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tw = ggml_new_tensor_2d(ctx, type, ne0, nr);
        ggml_tensor * tx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, 1);
        ggml_tensor * tb = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, nr);
        ins.push_back({tw, uq.data()});
        ins.push_back({tx, x.data()});
        ins.push_back({tb, bias.data()});
        return ggml_add(ctx, ggml_mul_mat(ctx, tw, tx), tb);
    };
    builder bld_glu = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tu = ggml_new_tensor_2d(ctx, type, ne0, nr);
        ggml_tensor * tg = ggml_new_tensor_2d(ctx, type, ne0, nr);
        ggml_tensor * tx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, 1);
        ins.push_back({tu, uq.data()});
        ins.push_back({tg, gq.data()});
        ins.push_back({tx, x.data()});
        return ggml_swiglu_split(ctx, ggml_mul_mat(ctx, tg, tx), ggml_mul_mat(ctx, tu, tx));
    };
    check(std::string("mul_mat + bias (fusable) ") + ggml_type_name(type), bld_bias, ref_bias, TOL_Q8_REF, TOL_Q8_CPU);
    check(std::string("swiglu(gate, up) (fusable) ") + ggml_type_name(type), bld_glu, ref_glu, TOL_Q8_REF, TOL_Q8_CPU);
}

// llama's FFN: swiglu(gate, up) of two permuted products of one input, each weight with its own
// column permutation and MLWQ width (bg, bu: mlwq-export gives gate and up their own BPLL widths);
// CUDA runs it as one fused mat-vec over two permuted quantizations of x.
// And llama's residual add after a permuted product, fused as a bias.
static void test_fusion_perm(int bu, int bg, int64_t ne0, int64_t nr) {
    const ggml_type type   = mlwq_type(bu);
    const ggml_type type_g = mlwq_type(bg);
    const auto uq = make_mlwq(bu, ne0, nr, WIDTHS_TIERS);
    const auto gq = make_mlwq(bg, ne0, nr, WIDTHS_TIERS);
    const auto u  = dequant(type,   uq, ne0, nr);
    const auto g  = dequant(type_g, gq, ne0, nr);
    const auto pu = rand_perm(ne0);
    const auto pg = rand_perm(ne0);
    const auto x = rand_vec(ne0);
    const auto ru = ref_mm(u, permute_cols(x, pu), ne0, nr, 1);
    const auto rg = ref_mm(g, permute_cols(x, pg), ne0, nr, 1);
    std::vector<double> ref(nr);
    for (int64_t i = 0; i < nr; ++i) {
        ref[i] = rg[i]/(1.0 + std::exp(-rg[i]))*ru[i];
    }
    builder bld = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tu  = ggml_new_tensor_2d(ctx, type,   ne0, nr);
        ggml_tensor * tg  = ggml_new_tensor_2d(ctx, type_g, ne0, nr);
        ggml_tensor * tpu = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, ne0);
        ggml_tensor * tpg = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, ne0);
        ggml_tensor * tx  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, 1);
        ins.push_back({tu, uq.data()});
        ins.push_back({tg, gq.data()});
        ins.push_back({tpu, pu.data()});
        ins.push_back({tpg, pg.data()});
        ins.push_back({tx, x.data()});
        return ggml_swiglu_split(ctx, ggml_mlwq_mul_mat(ctx, tg, tx, tpg), ggml_mlwq_mul_mat(ctx, tu, tx, tpu));
    };
    char name[128];
    snprintf(name, sizeof(name), "swiglu(gate %s, up %s) permuted (fusable) %lldx%lld", ggml_type_name(type_g),
             ggml_type_name(type), (long long) nr, (long long) ne0);
    check(name, bld, ref, TOL_Q8_REF, TOL_Q8_CPU);

    // llama's residual: a permuted product + a vector of its shape, fused as a bias
    const auto res = rand_vec(nr);
    std::vector<double> ref_res(nr);
    for (int64_t i = 0; i < nr; ++i) {
        ref_res[i] = ru[i] + res[i];
    }
    builder bld_res = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tu  = ggml_new_tensor_2d(ctx, type, ne0, nr);
        ggml_tensor * tpu = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, ne0);
        ggml_tensor * tx  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, 1);
        ggml_tensor * tr  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, nr, 1);
        ins.push_back({tu, uq.data()});
        ins.push_back({tpu, pu.data()});
        ins.push_back({tx, x.data()});
        ins.push_back({tr, res.data()});
        return ggml_add(ctx, ggml_mlwq_mul_mat(ctx, tu, tx, tpu), tr);
    };
    snprintf(name, sizeof(name), "permuted + residual (fusable) %s %lldx%lld", ggml_type_name(type),
             (long long) nr, (long long) ne0);
    check(name, bld_res, ref_res, TOL_Q8_REF, TOL_Q8_CPU);
}

// llama's q, k and v: permuted products of ONE input with their own weights, widths and column
// orders; CUDA quantizes the input once for all of them (up to 4; a 5th quantizes on its own).
// share: products 0 and 1 use one permutation tensor.
static void test_shared_input(const std::vector<int> & widths, const std::vector<int64_t> & rows, int64_t ne0, bool share) {
    const size_t n = widths.size();
    const auto x = rand_vec(ne0);
    std::vector<std::vector<uint8_t>> wq(n);
    std::vector<std::vector<int32_t>> perms(n);
    std::vector<double> ref;
    for (size_t k = 0; k < n; ++k) {
        wq[k]    = make_mlwq(widths[k], ne0, rows[k], WIDTHS_TIERS);
        perms[k] = share && k == 1 ? perms[0] : rand_perm(ne0);
        const auto r = ref_mm(dequant(mlwq_type(widths[k]), wq[k], ne0, rows[k]), permute_cols(x, perms[k]), ne0, rows[k], 1);
        ref.insert(ref.end(), r.begin(), r.end());
    }
    builder bld = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, 1);
        ins.push_back({tx, x.data()});
        ggml_tensor * out = nullptr;
        ggml_tensor * tp  = nullptr;
        for (size_t k = 0; k < n; ++k) {
            ggml_tensor * tw = ggml_new_tensor_2d(ctx, mlwq_type(widths[k]), ne0, rows[k]);
            ins.push_back({tw, wq[k].data()});
            if (!(share && k == 1)) {
                tp = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, ne0);
                ins.push_back({tp, perms[k].data()});
            }
            ggml_tensor * y = ggml_mlwq_mul_mat(ctx, tw, tx, tp);
            out = out ? ggml_concat(ctx, out, y, 0) : y;
        }
        return out;
    };
    char name[128];
    snprintf(name, sizeof(name), "%zu permuted products of one input%s, K = %lld", n,
             share ? " (two share a permutation)" : "", (long long) ne0);
    check(name, bld, ref, TOL_Q8_REF, TOL_Q8_CPU);
}

// Two permuted products of one input next to each other (llama: V, RESHAPE, K), which the graph loop
// runs as one launch (ggml_cuda_mlwq_try_pair), optionally after a third product of the same input
// (llama's q: then their activations come from the quantization ahead). Widths wq (0: no third
// product), wa, wb; a and b have `rows` rows.
static void test_product_pair(int wq, int wa, int wb, int64_t rows, int64_t ne0, bool reshape_between) {
    const auto x = rand_vec(ne0);
    const int64_t rows_q = rows + 64;
    std::vector<int> widths = {wa, wb};
    std::vector<int64_t> nrows = {rows, rows};
    if (wq) {
        widths.insert(widths.begin(), wq);
        nrows.insert(nrows.begin(), rows_q);
    }
    const size_t n = widths.size();
    std::vector<std::vector<uint8_t>> wts(n);
    std::vector<std::vector<int32_t>> perms(n);
    std::vector<double> ref;
    for (size_t k = 0; k < n; ++k) {
        wts[k]   = make_mlwq(widths[k], ne0, nrows[k], WIDTHS_TIERS);
        perms[k] = rand_perm(ne0);
        const auto r = ref_mm(dequant(mlwq_type(widths[k]), wts[k], ne0, nrows[k]), permute_cols(x, perms[k]), ne0, nrows[k], 1);
        ref.insert(ref.end(), r.begin(), r.end());
    }
    builder bld = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, 1);
        ins.push_back({tx, x.data()});
        std::vector<ggml_tensor *> y(n);
        for (size_t k = 0; k < n; ++k) {
            ggml_tensor * tw = ggml_new_tensor_2d(ctx, mlwq_type(widths[k]), ne0, nrows[k]);
            ggml_tensor * tp = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, ne0);
            ins.push_back({tw, wts[k].data()});
            ins.push_back({tp, perms[k].data()});
            y[k] = ggml_mlwq_mul_mat(ctx, tw, tx, tp);
        }
        // node order: [q,] a, [RESHAPE,] b, CONCAT[, CONCAT]
        ggml_tensor * ya  = y[n - 2];
        ggml_tensor * ga  = reshape_between ? ggml_reshape_2d(ctx, ya, rows, 1) : ya;
        ggml_tensor * out = ggml_concat(ctx, ga, y[n - 1], 0);
        return wq ? ggml_concat(ctx, y[0], out, 0) : out;
    };
    char name[128];
    snprintf(name, sizeof(name), "two products in one launch: widths %d/%d, %lld x %lld%s%s", wa, wb,
             (long long) rows, (long long) ne0, reshape_between ? ", RESHAPE between" : "", wq ? ", after q" : "");
    check(name, bld, ref, TOL_Q8_REF, TOL_Q8_CPU);
}

// llama's attn_norm / ffn_norm before permuted products: RMS_NORM, MUL by a weight, then q, v, k
// (the v/k pair) or swiglu(gate, up) of its result. The graph loop runs the norm and the
// quantization for every product in one kernel (ggml_cuda_mlwq_try_norm_ahead).
static void test_norm_ahead(int64_t ne0, const std::vector<int> & widths, const std::vector<int64_t> & rows, bool glu) {
    const float eps = 1e-5f;
    const size_t n = widths.size();
    const auto x  = rand_vec(ne0);
    auto nw = rand_vec(ne0);
    for (auto & v : nw) v = 1.0f + 0.5f*v;
    double ss = 0;
    for (float v : x) ss += (double) v*v;
    const double sc = 1.0/std::sqrt(ss/ne0 + eps);
    std::vector<float> xn(ne0);
    for (int64_t k = 0; k < ne0; ++k) xn[k] = (float) (x[k]*sc*nw[k]);
    std::vector<std::vector<uint8_t>> wts(n);
    std::vector<std::vector<int32_t>> perms(n);
    std::vector<std::vector<double>> prod(n);
    for (size_t k = 0; k < n; ++k) {
        wts[k]   = make_mlwq(widths[k], ne0, rows[k], WIDTHS_TIERS);
        perms[k] = rand_perm(ne0);
        prod[k]  = ref_mm(dequant(mlwq_type(widths[k]), wts[k], ne0, rows[k]), permute_cols(xn, perms[k]), ne0, rows[k], 1);
    }
    std::vector<double> ref;
    if (glu) {      // products 0 and 1: gate and up
        for (int64_t i = 0; i < rows[0]; ++i) {
            const double g = prod[0][i];
            ref.push_back(g/(1.0 + std::exp(-g))*prod[1][i]);
        }
    } else {
        for (auto & p : prod) ref.insert(ref.end(), p.begin(), p.end());
    }
    builder bld = [&](ggml_context * ctx, std::vector<input> & ins) {
        ggml_tensor * tx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, 1);
        ggml_tensor * tn = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, ne0);
        ins.push_back({tx, x.data()});
        ins.push_back({tn, nw.data()});
        ggml_tensor * xn_t = ggml_mul(ctx, ggml_rms_norm(ctx, tx, eps), tn);
        std::vector<ggml_tensor *> y(n);
        for (size_t k = 0; k < n; ++k) {
            ggml_tensor * tw = ggml_new_tensor_2d(ctx, mlwq_type(widths[k]), ne0, rows[k]);
            ggml_tensor * tp = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, ne0);
            ins.push_back({tw, wts[k].data()});
            ins.push_back({tp, perms[k].data()});
            y[k] = ggml_mlwq_mul_mat(ctx, tw, xn_t, tp);
        }
        if (glu) {
            return ggml_swiglu_split(ctx, y[0], y[1]);
        }
        // node order: RMS_NORM, MUL, y0, y1, ..., CONCAT...
        ggml_tensor * out = y[n - 1];
        for (size_t k = n - 1; k-- > 0;) {
            out = ggml_concat(ctx, y[k], out, 0);
        }
        return out;
    };
    char name[128];
    snprintf(name, sizeof(name), "RMS norm + %zu permuted products%s, K = %lld", n, glu ? " (swiglu)" : "", (long long) ne0);
    check(name, bld, ref, TOL_Q8_REF, TOL_Q8_CPU);
}

// ---- speed ----

// us per product (glu: per swiglu(gate, up) pair) of `copies` weights holding the bytes `one`, in one
// graph run `iters` times; MLWQ as llama runs it, with column permutations (gate and up: their own)
static double bench_mv(ggml_type type, const std::vector<uint8_t> & one, int64_t ne0, int64_t nr, int copies, int iters,
                       int ncols, bool glu) {
    std::vector<float> x = rand_vec(ne0*ncols);
    const bool permuted = ggml_mlwq_is_type(type);
    const auto perm   = rand_perm(ne0);
    const auto perm_g = rand_perm(ne0);
    const int nw = glu ? 2*copies : copies;
    ggml_init_params ip = { (size_t) (4*nw + 16)*ggml_tensor_overhead() + ggml_graph_overhead_custom(4*nw + 16, false), nullptr, true };
    ggml_context * ctx = ggml_init(ip);
    std::vector<ggml_tensor *> ws(nw);
    ggml_tensor * tx  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, ncols);
    ggml_tensor * tp  = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, ne0);
    ggml_tensor * tpg = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, ne0);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, 4*nw + 16, false);
    // each copy reads its own view of x: the CUDA graph loop quantizes once for the products of one
    // input tensor (llama's q, k, v), and here each copy is timed with its own quantization (a GLU
    // pair shares its view: gate and up of one input fuse)
    ggml_tensor * xv = nullptr;
    auto mm = [&](ggml_tensor * w, ggml_tensor * p) { return permuted ? ggml_mlwq_mul_mat(ctx, w, xv, p) : ggml_mul_mat(ctx, w, xv); };
    for (int c = 0; c < copies; ++c) {
        xv = ggml_view_2d(ctx, tx, ne0, ncols, tx->nb[1], 0);
        if (glu) {
            ws[2*c]     = ggml_new_tensor_2d(ctx, type, ne0, nr);
            ws[2*c + 1] = ggml_new_tensor_2d(ctx, type, ne0, nr);
            ggml_build_forward_expand(gf, ggml_swiglu_split(ctx, mm(ws[2*c], tpg), mm(ws[2*c + 1], tp)));
        } else {
            ws[c] = ggml_new_tensor_2d(ctx, type, ne0, nr);
            ggml_build_forward_expand(gf, mm(ws[c], tp));
        }
    }
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, g_cuda);
    for (int c = 0; c < nw; ++c) ggml_backend_tensor_set(ws[c], one.data(), 0, one.size());
    ggml_backend_tensor_set(tp, perm.data(), 0, ggml_nbytes(tp));
    ggml_backend_tensor_set(tpg, perm_g.data(), 0, ggml_nbytes(tpg));
    ggml_backend_tensor_set(tx, x.data(), 0, ggml_nbytes(tx));
    for (int i = 0; i < 3; ++i) ggml_backend_graph_compute(g_cuda, gf);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) ggml_backend_graph_compute(g_cuda, gf);
    ggml_backend_synchronize(g_cuda);
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count()/iters/copies;
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    return us;
}

static void run_bench(bool mlwq_only) {
    struct shape { const char * name; int64_t ne0, nr; bool glu; };
    const shape shapes[] = {
        {"1B attn_q/o 2048x2048",      2048, 2048, false},
        {"1B attn_k/v 512x2048",       2048,  512, false},
        {"1B ffn_gate/up 8192x2048",   2048, 8192, false},
        {"1B ffn_down 2048x8192",      8192, 2048, false},
        {"1B swiglu(gate,up) 2x8192",  2048, 8192, true},
        {"135M attn_q/o 576x576",       576,  576, false},
        {"135M attn_k/v 192x576",       576,  192, false},
        {"135M ffn_gate/up 1536x576",   576, 1536, false},
        {"135M ffn_down 576x1536",     1536,  576, false},
        {"135M swiglu(gate,up) 2x1536", 576, 1536, true},
    };
    const ggml_type types[] = { GGML_TYPE_MLWQ3, GGML_TYPE_Q3_K, GGML_TYPE_Q4_0, GGML_TYPE_Q8_0 };
    printf("\nmat-vec speed (CUDA0; each figure: one MUL_MAT of a weight that is not in L2, in a graph of\n"
           "many such; us per product incl. its q8_1 activation quantization, for MLWQ with its column\n"
           "permutation; swiglu: us per fused gate+up+GLU pair; GB/s = weight bytes / time; Q3_K needs\n"
           "rows of 256: '-' for 576 columns)\n");
    for (int ncols : {1, 4}) {
        printf("\n  batch %d\n  %-28s", ncols, "shape");
        for (ggml_type t : types) {
            if (!mlwq_only || t == GGML_TYPE_MLWQ3) printf(" %20s", ggml_type_name(t));
        }
        printf("\n");
        for (const shape & s : shapes) {
            if (s.glu && ncols != 1) {
                continue;   // GLU fusion is for one token
            }
            printf("  %-28s", s.name);
            for (ggml_type t : types) {
                if (mlwq_only && t != GGML_TYPE_MLWQ3) {
                    continue;
                }
                if (s.ne0 % ggml_blck_size(t) != 0) {
                    printf(" %20s", "-");
                    continue;
                }
                std::vector<uint8_t> one;
                if (t == GGML_TYPE_MLWQ3) {
                    one = make_mlwq(3, s.ne0, s.nr, WIDTHS_TIERS);
                } else {
                    const auto f = rand_vec(s.ne0*s.nr, 0.05f);
                    one.resize(ggml_row_size(t, s.ne0)*s.nr);
                    ggml_quantize_chunk(t, f.data(), one.data(), 0, s.nr, s.ne0, nullptr);
                }
                const int nmat   = s.glu ? 2 : 1;
                const int copies = (int) std::max<int64_t>(8, (int64_t) (400e6/(nmat*one.size())));
                const double us = bench_mv(t, one, s.ne0, s.nr, copies, 20, ncols, s.glu);
                printf("   %7.2f us %6.0f GB/s", us, nmat*one.size()/us*1e-3);
                fflush(stdout);
            }
            printf("\n");
        }
    }
}

int main(int argc, char ** argv) {
    const bool bench = argc > 1 && std::string(argv[1]) == "--bench";
    g_cuda = ggml_backend_cuda_init(0);
    g_cpu  = ggml_backend_cpu_init();
    if (!g_cuda) { fprintf(stderr, "no CUDA device\n"); return 1; }
    ggml_backend_cpu_set_n_threads(g_cpu, 8);

    if (bench) {
        run_bench(argc > 2 && std::string(argv[2]) == "mlwq");
        return 0;
    }

    printf("test-mlwq-cuda: %s vs reference and %s\n", ggml_backend_name(g_cuda), ggml_backend_name(g_cpu));
    for (int b : {2, 3, 4}) {
        for (int nc : {1, 2, 3, 4, 5, 8, 9, 33}) {
            test_mul_mat(b, 576, 192, nc, WIDTHS_WILD);       // K = 9: odd, rows only 4-byte aligned
        }
        test_mul_mat(b, 2048, 256, 1, WIDTHS_TIERS);
        test_mul_mat(b, 64*70, 130, 1, WIDTHS_WILD);          // K = 70: three rounds of 32 blocks
        test_mul_mat(b, 64*70, 130, 7, WIDTHS_WILD);
        test_mul_mat(b, 64*70, 130, 64, WIDTHS_WILD);
        test_mul_mat(b, 64, 33, 1, WIDTHS_WILD);              // K = 1
        test_mul_mat(b, 2048, 1030, 1, WIDTHS_TIERS);         // 2 rows per warp, a partial last group
        test_mul_mat(b, 64*70, 4099, 1, WIDTHS_WILD);         // 4 rows per warp, 2 warps per row group
        test_mul_mat(b, 64*72, 130, 1, WIDTHS_WILD);          // K = 72: codes load 8 bytes at a time
        test_mul_mat(b, 64*72, 130, 5, WIDTHS_WILD);
        test_mul_mat(b, 64*72, 4099, 1, WIDTHS_WILD);         // generation's pipe: CTAs of several row groups
        test_mul_mat(b, 512, 131, 1, WIDTHS_WILD);            // K = 8: the pipe's shortest rows, a partial group
        test_mul_mat(b, 256, 131, 1, WIDTHS_WILD);            // K = 4 (pipe-k4.patch: a group ends in 8 bytes)
        test_mul_mat_perm(b, 576, 192, 1, 0);
        test_mul_mat_perm(b, 576, 1536, 1, 64);
        test_mul_mat_perm(b, 1536, 576, 3, 0);
        test_mul_mat_perm(b, 576, 192, 40, 64);               // cuBLAS path: a permuted copy of x
        test_mul_mat_perm(b, 64*70, 200, 1, 0);               // 2 warps a row
        test_mul_mat_batched(b, 320, 48, 1);
        test_mul_mat_batched(b, 320, 48, 3);
        test_mul_mat_batched(b, 320, 48, 17);
        test_mul_mat_view(b, 512, 40, 1);
        test_mul_mat_view(b, 512, 40, 20);
        test_get_rows(b, 576, 50, 17, false);
        test_get_rows(b, 576, 50, 5, true);
        test_corrupt_mul_mat(b, 64*40, 64, 1);
        test_corrupt_mul_mat(b, 64*40, 64, 16);
        test_mul_mat_id(b, 512, 96, 4, 2, 1);
        test_mul_mat_id(b, 512, 96, 4, 2, 5);
        test_mul_mat_id(b, 512, 96, 4, 2, 12);
        test_fusion(b, 576, 300);
        test_fusion(b, 512, 131);                             // the pipe's bias and GLU epilogues
        test_fusion(b, 256, 131);
        test_fusion_perm(b, b, 576, 1536);
        test_fusion_perm(b, b, 64*70, 130);                   // 3 rounds: 2 warps a row
        test_fusion_perm(b, b == 2 ? 3 : b - 1, 576, 1536);   // gate and up of two widths
        test_fusion_perm(b, b == 4 ? 2 : b + 1, 64*70, 130);
        test_fusion_perm(b, b == 4 ? 2 : b + 1, 64*72, 130);  // two widths, 8-byte code loads
    }
    test_shared_input({3, 2, 4}, {576, 192, 192}, 576, false);         // SmolLM2's q, k, v
    test_shared_input({2, 3}, {2048, 512}, 2048, true);
    test_shared_input({4, 3, 2, 3, 2}, {64, 100, 33, 64, 7}, 64*70, false);
    test_product_pair(0, 3, 3, 192, 576, false);
    test_product_pair(0, 2, 4, 192, 576, true);
    test_product_pair(3, 2, 3, 192, 576, true);                        // SmolLM2's q, v, k
    test_product_pair(4, 3, 3, 512, 2048, true);                       // Llama-3.2-1B's
    test_product_pair(2, 4, 2, 100, 64*70, true);                      // 3 rounds: 2 warps a row
    test_norm_ahead(576, {3, 2, 3}, {576, 192, 192}, false);          // SmolLM2's attn_norm, q, v, k
    test_norm_ahead(576, {2, 3}, {1536, 1536}, true);                  // SmolLM2's ffn_norm, gate, up
    test_norm_ahead(2048, {3, 4, 3, 2}, {2048, 512, 512, 100}, false);  // 1B shape (1024 threads), 4 orders
    test_norm_ahead(2048, {3, 3}, {8192, 8192}, true);
    test_norm_ahead(64*70, {4}, {70}, false);                         // one product, a padded row
    printf("test-mlwq-cuda: %d/%d cases passed\n", g_pass, g_total);
    ggml_backend_free(g_cuda);
    ggml_backend_free(g_cpu);
    return g_pass == g_total ? 0 : 1;
}
