"""The MLWQ ggml tensor format: the one Python definition (ggml_patch/FORMAT.md is the written one).

Pure numpy, no torch and no gguf import, so the exporter, the tests and any tool can use it.

Two versions. Format 2 is the rows the kernels read (llama.cpp's runtime layout); format 3 is
what mlwq-export writes (pack_rows_v3): the same codes under a one-byte header, with each row's
scale and the block widths in small side tensors, which the loader expands to format 2 rows
(expand_v3) as it reads the file.

Format version 2. A tensor of type MLWQb (b = 2, 3, 4) has ``ne0`` columns (a multiple of 64,
K = ne0 / 64 blocks) and rows of exactly ``K * (2 + 8*b)`` bytes::

    [K headers of 2 bytes][codes of block 0][codes of block 1] ... [codes of block K-1][zero padding]
    header j = u8 s | u8 (zero | (bits - 1) << 5)      bits in 1..8, zero <= min(2^bits - 1, 31)

The scale is coded on a log grid, 8 steps per octave over 32 octaves:
``d = SCALE_MANTISSA[s % 8] * 2^(s // 8 + SCALE_EXP0)`` (exact float32 values, SCALE_TABLE).

Block j's codes take ``8 * bits_j`` bytes, stored as bit planes (low bits first); the planes of
a width are taken greedily 4, then 2, then 1 (3 = [2, 1], 5 = [4, 1], 7 = [4, 2, 1], 8 = [4, 4]).
A plane of width p has 8*p bytes; byte i holds, at bit offset k*p, column ``i + k*8*p``
(k = 0 .. 8/p - 1). When sum(bits) < K*b (the tier split does not fill the row), the row ends
with zero bytes; every byte is counted in the file's bits per weight.
Dequantized permuted column 64*j + i: ``d_j * float32(q - zero_j)`` in float32.

Format version 3. A tensor of type MLWQb_V3 has rows of ``K * (1 + 8*b)`` bytes::

    [K headers of 1 byte][codes and padding exactly as format 2]
    header j = c_j | zero_j << 4          scale code s_j = r - 4*c_j >= 0, zero_j <= min(2^bits_j - 1, 15)

beside ``<base>.mlwq_scale`` (I8 [rows]: r, the row's scale code, read unsigned), ``<base>.mlwq_bits``
(I8 [K]: the block widths, the same on every row) and ``<base>.mlwq_perm`` (I16 [ne0]).
"""

from __future__ import annotations

import numpy as np

# ---- constants shared with the C side (ggml/include/ggml-mlwq.h) and gguf-py (constants.py) ----
QK = 64                           # columns per block
HEADER_BYTES = 2                  # u8 scale code + u8 (zero | (bits - 1) << 5)
MIN_BITS, MAX_BITS = 1, 8         # widths a block header may hold
ZERO_MAX = 31                     # the header's 5-bit zero field (binds only for widths >= 6)
WIDTHS = (2, 3, 4)                # type widths b: MLWQ2, MLWQ3, MLWQ4
GGML_TYPE_ID = {2: 143, 3: 144, 4: 145}        # enum ggml_type GGML_TYPE_MLWQ<b>
V1_TYPE_IDS = (140, 141, 142)                  # format version 1's types: refused, naming the version
TYPE_NAME = {b: f"MLWQ{b}" for b in WIDTHS}    # gguf-py GGMLQuantizationType names
GGML_TYPE_NAME = {b: f"mlwq{b}" for b in WIDTHS}  # ggml_type_name()
LLAMA_FTYPE = {2: 143, 3: 144, 4: 145}         # enum llama_ftype LLAMA_FTYPE_MOSTLY_MLWQ<b>
FORMAT_VERSION = 2

# the block scale grid: d(s) = SCALE_MANTISSA[s % 8] * 2^(s // 8 + SCALE_EXP0), s = 0..255, i.e.
# 2^(s/8 - 20) from 2^-20 to 2^11.875; the mantissas are float32(2^(i/8)), written out so that C
# (ggml-mlwq.h) and numpy hold the same bits, and d is an exact product in both
SCALE_STEPS_PER_OCTAVE = 8
SCALE_EXP0 = -20
SCALE_MANTISSA = np.array([float.fromhex(h) for h in (
    "0x1.000000p+0", "0x1.172b84p+0", "0x1.306fe0p+0", "0x1.4bfdaep+0",
    "0x1.6a09e6p+0", "0x1.8ace54p+0", "0x1.ae89fap+0", "0x1.d5818ep+0")], dtype=np.float32)
SCALE_TABLE = (SCALE_MANTISSA[np.arange(256) % 8]
               * np.ldexp(np.float32(1), np.arange(256) // 8 + SCALE_EXP0).astype(np.float32)).astype(np.float32)
KEY_FORMAT_VERSION = "mlwq.format_version"     # GGUF KV (uint32), checked by the loader
PERM_SUFFIX = "mlwq_perm"                      # "blk.0.attn_q.weight" -> "blk.0.attn_q.mlwq_perm"

# ---- format version 3 (what mlwq-export writes; the loader expands it to format 2 rows) ----
V3_FORMAT_VERSION = 3
V3_HEADER_BYTES = 1                # c_j | zero_j << 4
V3_SCALE_STEP = 4                  # one step of c_j: 4 codes of SCALE_TABLE, half an octave
V3_SCALE_SPAN = 15 * V3_SCALE_STEP # a block's scale code lies in r - 60 .. r
V3_ZERO_MAX = 15
V3_GGML_TYPE_ID = {2: 146, 3: 147, 4: 148}      # enum ggml_type GGML_TYPE_MLWQ<b>_V3
V3_TYPE_NAME = {b: f"MLWQ{b}_V3" for b in WIDTHS}
V3_PERM_MAX_COLUMNS = 1 << 15      # I16 permutation entries
SCALE_SUFFIX = "mlwq_scale"        # I8 [rows]: each row's scale code r
BITS_SUFFIX = "mlwq_bits"          # I8 [K]: the block widths


def type_size(b: int) -> int:
    """Bytes per 64-column block of MLWQb (ggml type_size)."""
    _check_width(b)
    return HEADER_BYTES + 8 * b


def row_bytes(ne0: int, b: int) -> int:
    return (ne0 // QK) * type_size(b)


def v3_type_size(b: int) -> int:
    """Bytes per 64-column block of MLWQb_V3."""
    _check_width(b)
    return V3_HEADER_BYTES + 8 * b


def width_of_type_id(type_id: int, ids: dict = GGML_TYPE_ID) -> int | None:
    """b of an MLWQb type id (of format 2; of format 3 with ids=V3_GGML_TYPE_ID), None otherwise."""
    for b, t in ids.items():
        if t == int(type_id):
            return b
    return None


def width_of_v3_type_id(type_id: int) -> int | None:
    return width_of_type_id(type_id, V3_GGML_TYPE_ID)


def _side_name(weight_name: str, suffix: str) -> str:
    base = weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name
    return f"{base}.{suffix}"


def perm_name(weight_name: str) -> str:
    """GGUF name of a weight's permutation tensor."""
    return _side_name(weight_name, PERM_SUFFIX)


def scale_name(weight_name: str) -> str:
    """GGUF name of a format 3 weight's row scale codes."""
    return _side_name(weight_name, SCALE_SUFFIX)


def bits_name(weight_name: str) -> str:
    """GGUF name of a format 3 weight's block widths."""
    return _side_name(weight_name, BITS_SUFFIX)


def planes(width: int) -> list[int]:
    """Bit planes of one block of this width, low bits first (greedy 4, 2, 1)."""
    out, rest = [], int(width)
    while rest >= 4:
        out.append(4)
        rest -= 4
    if rest >= 2:
        out.append(2)
        rest -= 2
    if rest == 1:
        out.append(1)
    return out


def round_to_scale_grid(d: np.ndarray) -> np.ndarray:
    """The nearest grid scale (in log terms, clamped to the grid's range) of each d, float32."""
    d = np.maximum(np.asarray(d, dtype=np.float64), float(SCALE_TABLE[0]))
    s = np.clip(np.rint(np.log2(d) * SCALE_STEPS_PER_OCTAVE) - SCALE_EXP0 * SCALE_STEPS_PER_OCTAVE, 0, 255)
    return SCALE_TABLE[s.astype(np.int64)]


def scale_codes(scale: np.ndarray) -> np.ndarray:
    """uint8 code of every scale, which must be exactly on the grid (SCALE_TABLE); ValueError otherwise."""
    d = np.asarray(scale, dtype=np.float32)
    s = np.clip(np.searchsorted(SCALE_TABLE, d), 0, 255)
    off = SCALE_TABLE[s] != d
    if np.any(off):
        i = tuple(int(v[0]) for v in np.nonzero(off))
        raise ValueError(f"scale {float(d[i])!r} at {i} is not on the format's scale grid (2^(k/8), "
                         f"{SCALE_TABLE[0]:.3g} .. {SCALE_TABLE[-1]:.4g}): quantize with this mlwq "
                         f"(its checkpoints from before format version 2 hold fp16 scales)")
    return s.astype(np.uint8)


def _check_width(b: int) -> None:
    if int(b) not in WIDTHS:
        raise ValueError(f"MLWQ type width b={b} is not one of {WIDTHS}")


def validate(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: np.ndarray, b: int) -> np.ndarray:
    """Refuse anything pack_rows could not store exactly. Raises ValueError saying what is wrong;
    returns the scales' codes (uint8 [rows, K])."""
    _check_width(b)
    codes, scale, zero, bits = (np.asarray(a) for a in (codes, scale, zero, bits))
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D [rows, ne0], got shape {codes.shape}")
    rows, ne0 = codes.shape
    if ne0 == 0 or ne0 % QK:
        raise ValueError(f"ne0={ne0} columns is not a positive multiple of the MLWQ block size {QK}")
    K = ne0 // QK
    if codes.dtype != np.uint8:
        raise ValueError(f"codes must be uint8, got {codes.dtype}")
    if scale.shape != (rows, K) or zero.shape != (rows, K) or bits.shape != (K,):
        raise ValueError(f"shapes do not match: codes {codes.shape} needs scale/zero {(rows, K)} and bits {(K,)}, "
                         f"got scale {scale.shape}, zero {zero.shape}, bits {bits.shape}")
    if scale.dtype != np.float32:
        raise ValueError(f"scale must be float32 values of the scale grid, got {scale.dtype}")
    if zero.dtype != np.uint8 or bits.dtype != np.uint8:
        raise ValueError(f"zero and bits must be uint8, got {zero.dtype} and {bits.dtype}")
    if bits.min() < MIN_BITS or bits.max() > MAX_BITS:
        bad = int(np.flatnonzero((bits < MIN_BITS) | (bits > MAX_BITS))[0])
        raise ValueError(f"block {bad} has bits={int(bits[bad])}, outside {MIN_BITS}..{MAX_BITS}")
    total = int(bits.astype(np.int64).sum())
    if total > K * b:
        raise ValueError(f"sum(bits)={total} exceeds K*b={K * b} (K={K} blocks, type MLWQ{b}): the codes do not fit the row")
    if (b - 1) in WIDTHS and total <= K * (b - 1):
        raise ValueError(f"sum(bits)={total} fits MLWQ{b - 1} (K*{b - 1}={K * (b - 1)}): use the narrowest type, "
                         f"b = ceil(sum(bits)/K)")
    maxq = (1 << bits.astype(np.int64)) - 1                      # [K]
    maxz = np.minimum(maxq, ZERO_MAX)
    if np.any(zero.astype(np.int64) > maxz[None, :]):
        r, j = (int(v[0]) for v in np.nonzero(zero.astype(np.int64) > maxz[None, :]))
        raise ValueError(f"row {r} block {j}: zero={int(zero[r, j])} > min(2^bits-1, {ZERO_MAX})={int(maxz[j])}")
    s_codes = scale_codes(scale)
    colmax = np.repeat(maxq, QK)                                  # [ne0]
    over = codes.astype(np.int64) > colmax[None, :]
    if np.any(over):
        r, c = (int(v[0]) for v in np.nonzero(over))
        raise ValueError(f"row {r} column {c}: code {int(codes[r, c])} >= 2^bits={int(colmax[c]) + 1} "
                         f"(block {c // QK} has {int(bits[c // QK])} bits)")
    return s_codes


def _block_offsets(bits: np.ndarray) -> np.ndarray:
    """Byte offset of each block's codes inside a row (headers excluded)."""
    nb = 8 * bits.astype(np.int64)
    return np.concatenate([[0], np.cumsum(nb)[:-1]])


def pack_rows(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: np.ndarray, b: int) -> np.ndarray:
    """Pack one MLWQb matrix. codes uint8 [rows, ne0] (permuted column order), scale float32 [rows, K]
    (values of SCALE_TABLE), zero uint8 [rows, K], bits uint8 [K] (same widths on every row).
    Returns uint8 [rows, row_bytes]."""
    s_codes = validate(codes, scale, zero, bits, b)
    codes = np.ascontiguousarray(codes)
    rows, ne0 = codes.shape
    K = ne0 // QK
    out = np.zeros((rows, K * type_size(b)), dtype=np.uint8)
    hdr = out[:, : K * HEADER_BYTES].reshape(rows, K, HEADER_BYTES)
    hdr[:, :, 0] = s_codes
    hdr[:, :, 1] = zero | ((bits[None, :] - 1) << 5).astype(np.uint8)
    offs = K * HEADER_BYTES + _block_offsets(bits)
    blocks = codes.reshape(rows, K, QK)
    for w in np.unique(bits):
        js = np.flatnonzero(bits == w)
        q = blocks[:, js, :].astype(np.uint8)                      # [rows, n, 64]
        parts, shift = [], 0
        for p in planes(int(w)):
            v = (q >> shift) & ((1 << p) - 1)
            nbytes, per = 8 * p, 8 // p
            v = v.reshape(rows, len(js), per, nbytes)               # column = k*nbytes + i
            byte = np.zeros((rows, len(js), nbytes), dtype=np.uint8)
            for k in range(per):
                byte |= (v[:, :, k, :] << (k * p)).astype(np.uint8)
            parts.append(byte)
            shift += p
        data = np.concatenate(parts, axis=2)                        # [rows, n, 8w]
        idx = (offs[js][:, None] + np.arange(8 * int(w))[None, :]).ravel()
        out[:, idx] = data.reshape(rows, -1)
    return out


def unpack_rows(data: np.ndarray, ne0: int, b: int):
    """Inverse of pack_rows: data uint8 [rows, row_bytes] -> (codes, scale, zero, bits).

    Checks the headers and the padding like the C loader does (ValueError on a bad row). Rows
    whose headers disagree on the block widths are valid ggml data but not a pack_rows output:
    they are refused here."""
    _check_width(b)
    if ne0 <= 0 or ne0 % QK:
        raise ValueError(f"ne0={ne0} is not a positive multiple of {QK}")
    K = ne0 // QK
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != K * type_size(b):
        raise ValueError(f"data must be uint8 [rows, {K * type_size(b)}] for MLWQ{b} with ne0={ne0}, "
                         f"got {data.dtype} {data.shape}")
    rows = data.shape[0]
    hdr = data[:, : K * HEADER_BYTES].reshape(rows, K, HEADER_BYTES)
    scale = SCALE_TABLE[hdr[:, :, 0]]
    zero = hdr[:, :, 1] & ZERO_MAX
    allbits = (hdr[:, :, 1] >> 5) + 1
    if rows and np.any(allbits != allbits[0:1, :]):
        r = int(np.flatnonzero(np.any(allbits != allbits[0:1, :], axis=1))[0])
        raise ValueError(f"row {r} has block widths different from row 0: unpack_rows needs the same widths on every row")
    bits = allbits[0].copy() if rows else np.zeros(K, np.uint8)
    if rows == 0:
        return np.zeros((0, ne0), np.uint8), scale, zero, bits
    if bits.min() < MIN_BITS or bits.max() > MAX_BITS:
        raise ValueError(f"header bits {bits.tolist()} outside {MIN_BITS}..{MAX_BITS}")
    total = int(bits.astype(np.int64).sum())
    if total > K * b:
        raise ValueError(f"sum(bits)={total} exceeds K*b={K * b}")
    used = K * HEADER_BYTES + 8 * total
    if np.any(data[:, used:]):
        raise ValueError("non-zero bytes in the row padding after the codes")
    maxq = (1 << bits.astype(np.int64)) - 1
    if np.any(zero.astype(np.int64) > maxq[None, :]):
        raise ValueError("a header has zero > 2^bits - 1")
    offs = K * HEADER_BYTES + _block_offsets(bits)
    codes = np.zeros((rows, K, QK), dtype=np.uint8)
    for w in np.unique(bits):
        js = np.flatnonzero(bits == w)
        idx = (offs[js][:, None] + np.arange(8 * int(w))[None, :]).ravel()
        raw = data[:, idx].reshape(rows, len(js), 8 * int(w))
        q = np.zeros((rows, len(js), QK), dtype=np.uint8)
        pos, shift = 0, 0
        for p in planes(int(w)):
            nbytes, per = 8 * p, 8 // p
            byte = raw[:, :, pos: pos + nbytes]
            v = np.stack([(byte >> (k * p)) & ((1 << p) - 1) for k in range(per)], axis=2)  # [rows, n, per, nbytes]
            q |= (v.reshape(rows, len(js), QK) << shift).astype(np.uint8)
            pos += nbytes
            shift += p
        codes[:, js, :] = q
    return codes.reshape(rows, ne0), scale, zero, bits


def dequantize_rows(data: np.ndarray, ne0: int, b: int) -> np.ndarray:
    """fp32 [rows, ne0] in PERMUTED column order: d * float32(q - zero), as the C to_float."""
    codes, scale, zero, bits = unpack_rows(data, ne0, b)
    return dequantize_codes(codes, scale, zero)


def dequantize_codes(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    rows, ne0 = codes.shape
    d = np.repeat(scale.astype(np.float32), QK, axis=1)
    z = np.repeat(zero.astype(np.float32), QK, axis=1)
    return (d * (codes.astype(np.float32) - z)).astype(np.float32)


def unpermute_columns(w_perm: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Weight in the original column order: W[:, perm[j]] = w_perm[:, j]."""
    out = np.empty_like(w_perm)
    out[:, np.asarray(perm, dtype=np.int64)] = w_perm
    return out


def validate_perm(perm: np.ndarray, ne0: int) -> None:
    perm = np.asarray(perm)
    if perm.dtype != np.int32 or perm.shape != (ne0,):
        raise ValueError(f"perm must be int32 [{ne0}], got {perm.dtype} {perm.shape}")
    if perm.min() < 0 or perm.max() >= ne0:
        raise ValueError(f"perm entries must be in 0..{ne0 - 1}, got min {perm.min()} max {perm.max()}")
    if np.unique(perm).size != ne0:
        raise ValueError("perm has repeated entries: it is not a permutation")


# ---- format version 3 ---------------------------------------------------------------------------

def v3_unfit(scale: np.ndarray, zero: np.ndarray) -> str | None:
    """Why these scales and zero points cannot be format 3 headers (None if they can): every scale
    of a row on the half-octave steps of the row's largest, at most 15 steps below it, zero <= 15."""
    s = scale_codes(scale).astype(np.int64)
    if s.size == 0:
        return None
    below = s.max(axis=1, keepdims=True) - s
    if np.any(below % V3_SCALE_STEP):
        r, j = (int(v[0]) for v in np.nonzero(below % V3_SCALE_STEP))
        return (f"row {r} block {j}: scale code {int(s[r, j])} is not a whole number of half octaves below the "
                f"row's {int(s[r].max())} (a checkpoint quantized for format 2)")
    if np.any(np.asarray(zero) > V3_ZERO_MAX):
        r, j = (int(v[0]) for v in np.nonzero(np.asarray(zero) > V3_ZERO_MAX))
        return f"row {r} block {j}: zero point {int(zero[r, j])} > {V3_ZERO_MAX} (a checkpoint quantized for format 2)"
    if np.any(below > V3_SCALE_SPAN):
        r, j = (int(v[0]) for v in np.nonzero(below > V3_SCALE_SPAN))
        return f"row {r} block {j}: scale {float(scale[r, j])!r} is more than 7.5 octaves below its row's largest"
    return None


def lift_small_scales(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: np.ndarray):
    """(codes, scale, zero, n) with every block whose scale lies more than 7.5 octaves below its
    row's largest requantized at the lowest scale the row's header can hold (n such blocks). Such
    a block's weights are under 2^-7.5 of the row's largest step, so the rounding moves them by
    less than that; the quantizer never made one on the models measured."""
    s = scale_codes(scale).astype(np.int64)
    floor = s.max(axis=1, keepdims=True) - V3_SCALE_SPAN
    low = s < floor
    n = int(low.sum())
    if n == 0:
        return codes, scale, zero, 0
    codes, scale, zero = codes.copy(), scale.copy(), zero.copy()
    blocks = codes.reshape(codes.shape[0], -1, QK)
    for r, j in zip(*np.nonzero(low)):
        qmax = (1 << int(bits[j])) - 1
        w = np.float32(scale[r, j]) * (blocks[r, j].astype(np.float32) - np.float32(zero[r, j]))
        d = SCALE_TABLE[int(floor[r, 0])]
        z = int(np.clip(np.rint(-w.min() / d), 0, min(qmax, V3_ZERO_MAX)))
        blocks[r, j] = np.clip(np.rint(w / d) + z, 0, qmax).astype(np.uint8)
        scale[r, j], zero[r, j] = d, z
    return blocks.reshape(codes.shape), scale, zero, n


def pack_rows_v3(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: np.ndarray, b: int):
    """Pack one MLWQb_V3 matrix (arguments as pack_rows). Returns (rows uint8 [rows, K*(1+8b)],
    row scale codes uint8 [rows]); ValueError where the scales or zero points do not fit (v3_unfit)."""
    data = pack_rows(codes, scale, zero, bits, b)           # validates; format 2 rows
    why = v3_unfit(scale, zero)
    if why:
        raise ValueError(f"format 3 cannot hold it: {why}")
    rows, K = np.asarray(scale).shape
    s = scale_codes(scale).astype(np.int64)
    r = s.max(axis=1) if rows else np.zeros(0, np.int64)
    c = (r[:, None] - s) // V3_SCALE_STEP
    out = np.empty((rows, K * v3_type_size(b)), dtype=np.uint8)
    out[:, :K] = (c | (np.asarray(zero, np.int64) << 4)).astype(np.uint8)
    out[:, K:] = data[:, K * HEADER_BYTES:]
    return out, r.astype(np.uint8)


def expand_v3(data: np.ndarray, row_scale: np.ndarray, bits: np.ndarray, ne0: int, b: int) -> np.ndarray:
    """The loader's expansion: MLWQb_V3 rows + row scale codes + block widths -> MLWQb (format 2)
    rows, checking what the C loader checks (ValueError naming row and block)."""
    _check_width(b)
    if ne0 <= 0 or ne0 % QK:
        raise ValueError(f"ne0={ne0} is not a positive multiple of {QK}")
    K = ne0 // QK
    data, row_scale, bits = np.asarray(data), np.asarray(row_scale), np.asarray(bits)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != K * v3_type_size(b):
        raise ValueError(f"data must be uint8 [rows, {K * v3_type_size(b)}] for MLWQ{b}_V3 with ne0={ne0}, "
                         f"got {data.dtype} {data.shape}")
    rows = data.shape[0]
    if row_scale.shape != (rows,) or bits.shape != (K,):
        raise ValueError(f"row scales must be [{rows}] and widths [{K}], got {row_scale.shape} and {bits.shape}")
    bits = bits.astype(np.int64)
    if bits.min() < MIN_BITS or bits.max() > MAX_BITS:
        j = int(np.flatnonzero((bits < MIN_BITS) | (bits > MAX_BITS))[0])
        raise ValueError(f"block {j}: width {int(bits[j])} outside {MIN_BITS}..{MAX_BITS}")
    if int(bits.sum()) > K * b:
        raise ValueError(f"sum of block widths {int(bits.sum())} exceeds K*b = {K * b}")
    hdr = data[:, :K].astype(np.int64)
    zero, c = hdr >> 4, hdr & 15
    s = row_scale.astype(np.uint8).astype(np.int64)[:, None] - V3_SCALE_STEP * c
    if np.any(s < 0):
        r, j = (int(v[0]) for v in np.nonzero(s < 0))
        raise ValueError(f"row {r} block {j}: scale code {int(row_scale[r])} - 4*{int(c[r, j])} < 0")
    maxq = (1 << bits) - 1
    if np.any(zero > maxq[None, :]):
        r, j = (int(v[0]) for v in np.nonzero(zero > maxq[None, :]))
        raise ValueError(f"row {r} block {j}: zero = {int(zero[r, j])} > 2^bits - 1 = {int(maxq[j])}")
    used = K + 8 * int(bits.sum())
    if np.any(data[:, used:]):
        raise ValueError("non-zero bytes in the row padding after the codes")
    out = np.empty((rows, K * type_size(b)), dtype=np.uint8)
    h2 = out[:, : K * HEADER_BYTES].reshape(rows, K, HEADER_BYTES)
    h2[:, :, 0] = s.astype(np.uint8)
    h2[:, :, 1] = (zero | ((bits[None, :] - 1) << 5)).astype(np.uint8)
    out[:, K * HEADER_BYTES:] = data[:, K:]
    return out


def validate_perm16(perm: np.ndarray, ne0: int) -> np.ndarray:
    """The permutation as format 3 stores it (int16); ValueError if ne0 is too wide for 16 bits."""
    validate_perm(perm, ne0)
    if ne0 > V3_PERM_MAX_COLUMNS:
        raise ValueError(f"ne0={ne0} columns: format 3's 16-bit permutation holds at most {V3_PERM_MAX_COLUMNS}")
    return np.asarray(perm).astype(np.uint16).view(np.int16)
