"""The MLWQ ggml tensor format: the one Python definition (ggml_patch/FORMAT.md is the written one).

Pure numpy, no torch and no gguf import, so the exporter, the tests and any tool can use it.

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


def type_size(b: int) -> int:
    """Bytes per 64-column block of MLWQb (ggml type_size)."""
    _check_width(b)
    return HEADER_BYTES + 8 * b


def row_bytes(ne0: int, b: int) -> int:
    return (ne0 // QK) * type_size(b)


def width_of_type_id(type_id: int) -> int | None:
    for b, t in GGML_TYPE_ID.items():
        if t == int(type_id):
            return b
    return None


def perm_name(weight_name: str) -> str:
    """GGUF name of a weight's permutation tensor."""
    base = weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name
    return f"{base}.{PERM_SUFFIX}"


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
