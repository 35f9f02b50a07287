"""The MLWQ tensor format in Python (exporters/mlwq_format.py): round trips and refusals."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporters import mlwq_format as F


def random_layer(rng, rows, K, bits, b):
    bits = np.asarray(bits, dtype=np.uint8)
    maxq = (1 << bits.astype(np.int64)) - 1
    codes = (rng.integers(0, 256, (rows, K * F.QK)) & np.repeat(maxq, F.QK)).astype(np.uint8)
    scale = F.SCALE_TABLE[rng.integers(0, 256, (rows, K))]
    zero = (rng.integers(0, 256, (rows, K)) & np.minimum(maxq, F.ZERO_MAX)).astype(np.uint8)
    return codes, scale, zero, bits


def test_constants_match_format_md():
    assert [F.type_size(b) for b in (2, 3, 4)] == [18, 26, 34]
    assert F.GGML_TYPE_ID == {2: 143, 3: 144, 4: 145} and F.FORMAT_VERSION == 2
    assert F.planes(1) == [1] and F.planes(3) == [2, 1] and F.planes(7) == [4, 2, 1] and F.planes(8) == [4, 4]
    assert F.perm_name("blk.0.attn_q.weight") == "blk.0.attn_q.mlwq_perm"


def test_scale_grid():
    s = np.arange(256)
    want = 2.0 ** (s / 8 - 20)
    assert F.SCALE_TABLE.dtype == np.float32 and np.all(np.diff(F.SCALE_TABLE) > 0)
    assert np.all(np.abs(F.SCALE_TABLE / want - 1) < 2 ** -23)       # float32(2^(k/8)) times 2^e, exact
    assert (F.scale_codes(F.SCALE_TABLE) == s).all()
    assert (F.round_to_scale_grid(F.SCALE_TABLE * np.float32(1.02)) == F.SCALE_TABLE).all()
    assert F.round_to_scale_grid([0.0, 1e-12, 1e9]).tolist() == [F.SCALE_TABLE[0]] * 2 + [F.SCALE_TABLE[-1]]


def test_byte_layout_by_hand():
    # one row, one block of width 3 (planes 2 + 1), b = 3: header + 16 + 8 bytes = 26
    codes = np.arange(64, dtype=np.uint8)[None, :] % 8
    scale = np.array([[2 ** 0.5]], np.float32)                      # code 164: 2^(164/8 - 20)
    data = F.pack_rows(codes, scale, np.array([[5]], np.uint8), np.array([3], np.uint8), 3)
    assert data.shape == (1, 26)
    assert bytes(data[0, :2]) == bytes([164, 5 | (3 - 1) << 5])
    q = codes[0].astype(int)
    for i in range(16):   # 2-bit plane: columns i, i+16, i+32, i+48
        assert data[0, 2 + i] == sum((q[i + 16 * k] & 3) << (2 * k) for k in range(4))
    for i in range(8):    # 1-bit plane: bit 2 of columns i, i+8, ..., i+56
        assert data[0, 18 + i] == sum(((q[i + 8 * k] >> 2) & 1) << k for k in range(8))


@pytest.mark.parametrize("b,bits", [(2, [1, 3, 2, 2]), (3, [4, 2, 3, 3, 6, 1, 3, 2, 3]), (4, [4] * 5 + [3, 8, 1]),
                                    (3, [2, 3, 4])])
def test_round_trip(b, bits):
    rng = np.random.default_rng(1)
    codes, scale, zero, bits = random_layer(rng, 7, len(bits), bits, b)
    data = F.pack_rows(codes, scale, zero, bits, b)
    assert data.shape == (7, len(bits) * F.type_size(b))
    c2, s2, z2, b2 = F.unpack_rows(data, codes.shape[1], b)
    assert (c2 == codes).all() and (z2 == zero).all() and (b2 == bits).all()
    assert (s2.view(np.uint32) == scale.view(np.uint32)).all()
    w = F.dequantize_rows(data, codes.shape[1], b)
    ref = np.repeat(scale.astype(np.float32), 64, 1) * (codes.astype(np.float32) - np.repeat(zero, 64, 1))
    assert w.dtype == np.float32 and (w.view(np.uint32) == ref.view(np.uint32)).all()


def test_padding_when_the_split_does_not_fill_the_row():
    rng = np.random.default_rng(2)
    codes, scale, zero, bits = random_layer(rng, 3, 3, [2, 4, 2], 3)   # sum 8 < K*b = 9
    data = F.pack_rows(codes, scale, zero, bits, 3)
    assert (data[:, 3 * 2 + 8 * 8:] == 0).all() and data.shape[1] == 3 * 26
    data[1, -1] = 1
    with pytest.raises(ValueError, match="padding"):
        F.unpack_rows(data, 192, 3)


def test_speed_of_a_real_matrix():
    rng = np.random.default_rng(3)
    bits = np.array([4, 4, 4, 4, 4, 4, 2, 2, 2, 2, 2, 2] + [3] * 12, np.uint8)
    codes, scale, zero, bits = random_layer(rng, 576, 24, bits, 3)      # ffn_down of SmolLM2-135M: 576 x 1536
    t = time.perf_counter()
    data = F.pack_rows(codes, scale, zero, bits, 3)
    F.unpack_rows(data, 1536, 3)
    assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("mutate,msg", [
    (lambda c, s, z, b: (c, s, z, np.array([0, 3, 3], np.uint8)), "outside 1..8"),
    (lambda c, s, z, b: (c, s, z, np.array([9, 3, 3], np.uint8)), "outside 1..8"),
    (lambda c, s, z, b: (c, s, np.full_like(z, 8), b), "zero=8 > min"),
    (lambda c, s, z, b: (c, s, z, np.array([4, 3, 3], np.uint8)), "exceeds K"),
    (lambda c, s, z, b: (c, s, z, np.array([2, 2, 2], np.uint8)), "narrowest type"),
    (lambda c, s, z, b: (np.full_like(c, 8), s, z, b), "code 8 >= 2\\^bits=8"),
    (lambda c, s, z, b: (c, np.full_like(s, np.inf), z, b), "not on the format's scale grid"),
    (lambda c, s, z, b: (c, np.full_like(s, np.nan), z, b), "not on the format's scale grid"),
    (lambda c, s, z, b: (c, np.full_like(s, 1.5), z, b), "not on the format's scale grid"),
    (lambda c, s, z, b: (c[:, :100], s, z, b), "multiple of the MLWQ block"),
    (lambda c, s, z, b: (c, s.astype(np.float16), z, b), "float32"),
])
def test_refusals(mutate, msg):
    rng = np.random.default_rng(4)
    args = mutate(*random_layer(rng, 2, 3, [3, 3, 3], 3))
    with pytest.raises(ValueError, match=msg):
        F.pack_rows(*args, 3)


def test_zero_point_field_is_five_bits():
    rng = np.random.default_rng(6)
    codes, scale, zero, bits = random_layer(rng, 2, 2, [6, 6], 4)
    with pytest.raises(ValueError, match="zero=32 > min"):
        F.pack_rows(codes, scale, np.full_like(zero, 32), np.array([6, 2], np.uint8), 4)


def test_width_and_perm_refusals():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="not one of"):
        F.pack_rows(*random_layer(rng, 2, 1, [5], 5), 5)
    F.validate_perm(np.arange(64, dtype=np.int32)[::-1].copy(), 64)
    with pytest.raises(ValueError, match="repeated"):
        F.validate_perm(np.zeros(64, np.int32), 64)
    with pytest.raises(ValueError, match="in 0..63"):
        F.validate_perm(np.arange(1, 65, dtype=np.int32), 64)
    with pytest.raises(ValueError, match="int32"):
        F.validate_perm(np.arange(64, dtype=np.int64), 64)


def test_unpack_refuses_bad_headers():
    rng = np.random.default_rng(6)
    data = F.pack_rows(*random_layer(rng, 2, 2, [3, 3], 3), 3)
    bad = data.copy(); bad[0, 1] = 31                     # width 1, zero 31
    with pytest.raises(ValueError):
        F.unpack_rows(bad, 128, 3)
    bad = data.copy(); bad[1, 1] = 1 << 5; bad[1, 3] = 3 << 5   # widths 2, 4 where row 0 has 3, 3
    with pytest.raises(ValueError, match="different from row 0"):
        F.unpack_rows(bad, 128, 3)
    with pytest.raises(ValueError, match="uint8"):
        F.unpack_rows(data[:, :-1], 128, 3)


@st.composite
def layers(draw):
    b = draw(st.sampled_from(F.WIDTHS))
    K = draw(st.integers(1, 6))
    rows = draw(st.integers(1, 5))
    # widths 1..8 with b = ceil(mean), i.e. a sum in ((b-1)K, bK]: draw any widths, then step them
    # one at a time toward a drawn sum in that range (built to fit: a filter rejected so many draws
    # that Hypothesis's health check failed now and then)
    total = draw(st.integers((b - 1) * K + 1, b * K))
    bits = draw(st.lists(st.integers(1, 8), min_size=K, max_size=K))
    j = 0
    while sum(bits) != total:
        k = j % K
        if sum(bits) < total and bits[k] < 8:
            bits[k] += 1
        elif sum(bits) > total and bits[k] > 1:
            bits[k] -= 1
        j += 1
    seed = draw(st.integers(0, 2**32 - 1))
    return b, rows, bits, seed


@settings(max_examples=150, deadline=None)
@given(layers())
def test_pack_unpack_identity(layer):
    b, rows, bits, seed = layer
    rng = np.random.default_rng(seed)
    codes, scale, zero, bits = random_layer(rng, rows, len(bits), bits, b)
    scale[~np.isfinite(scale)] = 1
    data = F.pack_rows(codes, scale, zero, bits, b)
    assert data.shape == (rows, F.row_bytes(codes.shape[1], b))
    c2, s2, z2, b2 = F.unpack_rows(data, codes.shape[1], b)
    assert (c2 == codes).all() and (z2 == zero).all() and (b2 == bits).all()
    assert (s2.view(np.uint32) == scale.view(np.uint32)).all()
    assert (F.pack_rows(c2, s2, z2, b2, b) == data).all()


# ---- format 3 ------------------------------------------------------------------------------------

def random_layer_v3(rng, rows, K, bits, b):
    """A layer on format 3's grid: scales 2^(k/2) within 7.5 octaves of each row's largest, zero <= 15."""
    codes, _, _, bits = random_layer(rng, rows, K, bits, b)
    top = rng.integers(100, 200, (rows, 1))
    scale = F.SCALE_TABLE[top - 4 * rng.integers(0, 16, (rows, K))]
    maxq = (1 << bits.astype(np.int64)) - 1
    zero = (rng.integers(0, 256, (rows, K)) & np.minimum(maxq, F.V3_ZERO_MAX)).astype(np.uint8)
    return codes, scale, zero, bits


@pytest.mark.parametrize("b,bits", [(2, [1, 3, 2, 2]), (3, [4, 2, 3, 3, 6, 1, 3, 2, 3]), (4, [4] * 5 + [3, 8, 1]),
                                    (3, [3, 3, 2])])
def test_v3_expands_to_the_format2_rows(b, bits):
    codes, scale, zero, bits = random_layer_v3(np.random.default_rng(b), 7, len(bits), bits, b)
    data, row_scale = F.pack_rows_v3(codes, scale, zero, bits, b)
    K = len(bits)
    assert data.shape == (7, K * (1 + 8 * b)) and row_scale.dtype == np.uint8
    assert (row_scale == F.scale_codes(scale).max(axis=1)).all()
    assert (data[:, :K] >> 4 == zero).all()
    v2 = F.expand_v3(data, row_scale, bits, K * 64, b)
    assert (v2 == F.pack_rows(codes, scale, zero, bits, b)).all()


def test_v3_byte_layout_by_hand():
    # one row, K = 1, width 2: scale code 100 (the row's), zero 3 -> header 0x30; codes as format 2
    codes = np.tile(np.arange(4, dtype=np.uint8), 16)[None, :]
    data, r = F.pack_rows_v3(codes, F.SCALE_TABLE[[[100]]], np.array([[3]], np.uint8), np.array([2], np.uint8), 2)
    assert r.tolist() == [100] and data[0, 0] == 0x30 and data.shape == (1, 17)
    assert bytes(data[0, 1:]) == bytes(F.pack_rows(codes, F.SCALE_TABLE[[[100]]], np.array([[3]], np.uint8),
                                                   np.array([2], np.uint8), 2)[0, 2:])
    # two blocks, the second 3 half octaves below: c = 3 in its low nibble
    codes = np.zeros((1, 128), np.uint8)
    data, r = F.pack_rows_v3(codes, F.SCALE_TABLE[[[100, 88]]], np.zeros((1, 2), np.uint8), np.array([2, 2], np.uint8), 2)
    assert r.tolist() == [100] and data[0, :2].tolist() == [0, 3]


def test_v3_unfit_and_lift():
    codes, scale, zero, bits = random_layer_v3(np.random.default_rng(5), 3, 4, [5, 3, 3, 1], 3)
    assert F.v3_unfit(scale, zero) is None
    odd = scale.copy()
    odd[1, 2] = F.SCALE_TABLE[F.scale_codes(scale)[1].max() - 3]
    assert "not a whole number of half octaves" in F.v3_unfit(odd, zero)
    z = zero.copy()
    z[0, 0] = 16
    assert "zero point 16 > 15" in F.v3_unfit(scale, z)
    with pytest.raises(ValueError, match="format 3 cannot hold it"):
        F.pack_rows_v3(codes, scale, z, bits, 3)
    # a block 8 octaves (64 codes) below its row's largest: requantized at r - 60, within half a step
    low = scale.copy()
    top = F.scale_codes(scale)[2].max()
    low[2, 1] = F.SCALE_TABLE[top - 64]
    assert "more than 7.5 octaves" in F.v3_unfit(low, zero)
    c2, s2, z2, n = F.lift_small_scales(codes, low, zero, bits)
    assert n == 1 and F.v3_unfit(s2, z2) is None and F.scale_codes(s2)[2, 1] == top - 60
    w_old = F.dequantize_codes(codes, low, zero)[2, 64:128]
    w_new = F.dequantize_codes(c2, s2, z2)[2, 64:128]
    assert np.abs(w_new - w_old).max() <= 0.5 * s2[2, 1] + np.abs(w_old).max()
    assert (c2[[0, 1]] == codes[[0, 1]]).all() and (c2[2, :64] == codes[2, :64]).all()


@pytest.mark.parametrize("edit,msg", [
    (lambda d, r, bt: d.__setitem__((0, 0), 0xF0), r"zero = 15 > 2\^bits - 1"),
    (lambda d, r, bt: r.__setitem__(1, 3), "< 0"),
    (lambda d, r, bt: bt.__setitem__(0, 9), "width 9 outside 1..8"),
    (lambda d, r, bt: bt.__setitem__(0, 4), r"exceeds K\*b"),
    (lambda d, r, bt: d.__setitem__((2, -1), 1), "padding"),
])
def test_v3_expansion_refusals(edit, msg):
    rng = np.random.default_rng(3)
    codes, scale, zero, bits = random_layer_v3(rng, 3, 3, [2, 2, 1], 2)
    scale[1] = F.SCALE_TABLE[[60, 56, 52]]                        # row 1: c = 0, 1, 2 under r = 60
    data, r = F.pack_rows_v3(codes, scale, zero, bits, 2)
    bits = bits.copy()
    edit(data, r, bits)
    with pytest.raises(ValueError, match=msg):
        F.expand_v3(data, r, bits, 192, 2)


def test_v3_perm_is_16_bits():
    p = np.random.default_rng(0).permutation(640).astype(np.int32)
    assert (F.validate_perm16(p, 640).view(np.uint16) == p).all()
    with pytest.raises(ValueError, match="at most 32768"):
        F.validate_perm16(np.arange(40000, dtype=np.int32), 40000)
