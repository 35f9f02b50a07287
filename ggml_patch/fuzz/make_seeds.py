"""Seed corpus of the MLWQ fuzz targets (ggml_patch/fuzz/run_fuzz.sh runs it).

    python ggml_patch/fuzz/make_seeds.py OUTDIR      # writes OUTDIR/gguf/* and OUTDIR/rows/*

gguf/: files named valid-* must load (the loader's MLWQ checks accept them), all others must be
refused. Real exported files, small: a synthetic llama source GGUF (1 block, tiny tensors) and a
synthetic mlwq checkpoint go through the project's exporter (exporters.gguf_export.export_gguf,
packing by exporters.mlwq_format), giving two valid MLWQ GGUFs: `tiny` (one 64-column block per
weight, one weight of each type) and `mixed` (mixed tiers 1..8 bits, padded rows, 2 and 3 blocks).
Then targeted mutations of `mixed`, each one fault: header widths whose codes end past the row,
zero points too large, sum of widths, padding, permutation range and repeats, truncations, wrong
shapes and sizes, wrong and unused type ids, format version 1's type ids (140..142, which gguf refuses
naming the version; also a whole file of them), missing and orphan permutations, the format_version
key (missing, version 1, other values, other value types), 3-D and token_embd MLWQ tensors, duplicate
names (also equal only up to a NUL); and valid edge cases (a weight with no rows, format_version as
int32 / uint64, zero = 31 in 7- and 8-bit blocks, the smallest and largest scale codes). Format 3:
the mixed layers exported as format 3 and one-fault variants of its headers, side tensors (row
scales, widths), I16 permutations and version (v3_seeds).

Format version 2 (ggml-mlwq.h): a row of K blocks is K*(2 + 8b) bytes, K 2-byte headers
[u8 scale code s][u8 zero | (bits - 1) << 5] first; d = 2^(s/8 - 20), every code valid.

rows/: inputs of fuzz_mlwq_rows (layout in fuzz_mlwq_rows.c): rows packed by
exporters.mlwq_format.pack_rows for every type and many width mixes, each also with one fault,
plus permutations, shape mismatches and foreign type ids.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from exporters import mlwq_format as F  # noqa: E402
from exporters.gguf_export import _copy_kvs, export_gguf  # noqa: E402
from mlwq.checkpoint import FORMAT_VERSION as CHECKPOINT_VERSION  # noqa: E402

ARCH = "llama"
Q8_1_BLOCK = 36            # fp16 d, fp16 s, 32 x int8


def grid_scales(rng: np.random.Generator, shape) -> np.ndarray:
    """float32 scales on the format's grid, about 0.005 .. 0.2 (codes 100..140 of 0..255)."""
    return F.SCALE_TABLE[rng.integers(100, 141, shape)]


def hdr_byte1(zero: int, bits: int) -> bytes:
    """Second header byte: zero in bits 0-4, bits - 1 in bits 5-7."""
    return bytes([(zero & F.ZERO_MAX) | ((bits - 1) << 5)])


def hdr_bits(byte1: int) -> int:
    return (byte1 >> 5) + 1


def wrapping_ne0(type_size: int, target: int) -> int:
    """A 1-row ne0 (a multiple of 64, below 2^63) for which ggml_nbytes, ne0 * type_size / 64 in
    64-bit arithmetic, wraps to exactly `target` bytes (target a multiple of type_size's power of 2)."""
    e = (type_size & -type_size).bit_length() - 1          # type_size = 2^e * odd
    odd = type_size >> e
    assert target % (1 << e) == 0
    mod = 1 << (58 - e)                                     # 64 m * type_size = 64 target (mod 2^64)
    m = (target >> e) * pow(odd, -1, mod) % mod
    ne0 = 64 * m
    assert 0 < ne0 < 2**63 and (ne0 * type_size % 2**64) // 64 == target
    return ne0


# ---- valid files through the exporter --------------------------------------------------------

def _layers(kind: str) -> dict[str, tuple[int, int, list[int]]]:
    """HF linear name -> (rows, ne0, block widths). ceil(sum/K) picks the type (2, 3 or 4)."""
    if kind == "tiny":
        return {"model.layers.0.self_attn.q_proj": (2, 64, [2]),
                "model.layers.0.self_attn.k_proj": (2, 64, [3]),
                "model.layers.0.self_attn.v_proj": (1, 64, [4])}
    return {"model.layers.0.self_attn.q_proj": (2, 128, [1, 3]),        # MLWQ2
            "model.layers.0.self_attn.k_proj": (2, 128, [2, 4]),        # MLWQ3
            "model.layers.0.self_attn.v_proj": (2, 128, [7, 1]),        # MLWQ4, 7 bits = planes 4,2,1
            "model.layers.0.self_attn.o_proj": (1, 192, [8, 2, 2]),     # MLWQ4, 8 bits (nibble split)
            "model.layers.0.mlp.down_proj": (1, 192, [2, 3, 3])}        # MLWQ3, 8 bytes of padding


GGUF_BASE = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "down_proj": "ffn_down"}


def _source_gguf(path: Path, layers: dict) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), ARCH)
    w.add_block_count(1)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_embedding_length(64)
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    for name, (rows, ne0, _) in layers.items():
        base = GGUF_BASE[name.split(".")[-1]]
        w.add_tensor(f"blk.0.{base}.weight", np.zeros((rows, ne0), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def v3_grid_scales(rng: np.random.Generator, shape) -> np.ndarray:
    """float32 scales that format 3's 1-byte headers hold: each a whole number of half octaves
    (0..15) below its row's code (100..140)."""
    top = rng.integers(100, 141, (shape[0], 1))
    return F.SCALE_TABLE[top - F.V3_SCALE_STEP * rng.integers(0, 16, shape)]


def _checkpoint(d: Path, source: Path, layers: dict, rng: np.random.Generator, file_format: int = 2) -> None:
    from safetensors.numpy import save_file

    d.mkdir(parents=True, exist_ok=True)
    tensors = {}
    zero_max = F.V3_ZERO_MAX if file_format == 3 else F.ZERO_MAX
    for name, (rows, ne0, bits) in layers.items():
        bits = np.array(bits, dtype=np.uint8)
        maxq = (1 << bits.astype(np.int64)) - 1
        tensors[f"{name}.qcodes"] = (rng.integers(0, 256, (rows, ne0)) & np.repeat(maxq, 64)).astype(np.uint8)
        tensors[f"{name}.perm"] = rng.permutation(ne0).astype(np.int32)
        tensors[f"{name}.scale"] = (v3_grid_scales if file_format == 3 else grid_scales)(rng, (rows, bits.size))
        tensors[f"{name}.zero"] = (rng.integers(0, 256, (rows, bits.size)) & np.minimum(maxq, zero_max)).astype(np.uint8)
        tensors[f"{name}.group_bits"] = bits
    save_file(tensors, str(d / "quantized.safetensors"))
    config = {"seed": "fuzz", **({"file_format": 3} if file_format == 3 else {})}
    meta = {"format": "mlwq-checkpoint", "version": CHECKPOINT_VERSION, "source": str(source), "group_size": 64,
            "layers": {name: {} for name in layers}, "config": config}
    (d / "mlwq_checkpoint.json").write_text(json.dumps(meta))


def exported_file(tmp: Path, kind: str, seed: int, file_format: int = 2) -> Path:
    layers = _layers(kind)
    tag = kind if file_format == 2 else f"{kind}-v{file_format}"
    src = tmp / f"{tag}-source.gguf"
    _source_gguf(src, layers)
    _checkpoint(tmp / f"{tag}-ckpt", src, layers, np.random.default_rng(seed), file_format)
    out = tmp / f"{tag}.gguf"
    report = export_gguf(tmp / f"{tag}-ckpt", out, source=src, log=lambda m: None)
    assert report.file_format == file_format
    return out


# ---- byte-level mutations --------------------------------------------------------------------

def tensor_info(raw: bytes, name: str) -> tuple[int, int, int]:
    """(offset of n_dims, offset of the type id, offset of the data offset) in the header."""
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = raw.index(key) + len(key)
    n_dims = struct.unpack_from("<I", raw, pos)[0]
    return pos, pos + 4 + 8 * n_dims, pos + 8 + 8 * n_dims


def kv_value(raw: bytes, key: str) -> int:
    """Offset of the u32 value type of a key (the value follows)."""
    k = struct.pack("<Q", len(key)) + key.encode()
    return raw.index(k) + len(k)


def edit(raw: bytes, *edits: tuple[int, bytes]) -> bytes:
    b = bytearray(raw)
    for off, data in edits:
        b[off: off + len(data)] = data
    return bytes(b)


def data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    import gguf

    return {t.name: (int(t.data_offset), int(t.n_bytes)) for t in gguf.GGUFReader(str(path)).tensors}


def rewritten(src: Path, dst: Path, change) -> Path:
    """Copy of src through GGUFWriter; change(name, data, type) -> list of (name, data, type), or
    the string "kv" hook: change("kv", writer, None) may add keys; keys named in change.skip are dropped."""
    import gguf

    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), ARCH)
    _copy_kvs(r, w, gguf, skip=set(getattr(change, "skip", ())))
    if hasattr(change, "kv"):
        change.kv(w, gguf)
    for t in r.tensors:
        for name, data, ttype in change(t.name, np.asarray(t.data), t.tensor_type):
            w.add_tensor(name, data, raw_dtype=ttype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def dropped(*names):
    """A rewritten() change that leaves out the tensors named."""
    return lambda name, data, ttype: [] if name in names else [(name, data, ttype)]


def add_rewritten(seeds: dict[str, bytes], src: Path, tmp: Path, variants) -> None:
    """seeds[tag] = rewritten(src, ..., change) for each (tag, change) of variants."""
    for tag, fn in variants:
        try:
            seeds[tag] = rewritten(src, tmp / f"{tag}.gguf", fn).read_bytes()
        except Exception as e:      # a variant gguf-py cannot write is left out, with a note
            print(f"make_seeds: variant {tag} not written: {e}", file=sys.stderr)


def gguf_seeds(out: Path, tmp: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    tiny = exported_file(tmp, "tiny", 1)
    mixed = exported_file(tmp, "mixed", 2)
    seeds: dict[str, bytes] = {"valid-tiny": tiny.read_bytes(), "valid-mixed": mixed.read_bytes()}
    raw = seeds["valid-mixed"]
    offs = data_offsets(mixed)

    W2, W3, W4, W8, WPAD = ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight",
                            "blk.0.attn_output.weight", "blk.0.ffn_down.weight")
    # first row's headers: byte d + 2j is block j's scale code, byte d + 2j + 1 its zero | (bits - 1) << 5
    for w in (W2, W3, W4, W8):
        d, _ = offs[w]
        tag = w.split(".")[2]
        z0, z1 = raw[d + 1] & F.ZERO_MAX, raw[d + 3] & F.ZERO_MAX
        bits0 = hdr_bits(raw[d + 1])
        # width 8 on the first block: its codes (64 bytes) or the next block's end past the row
        if bits0 != 8:
            seeds[f"{tag}-first-bits8"] = edit(raw, (d + 1, hdr_byte1(z0, 8)))
        if bits0 < 5:
            seeds[f"{tag}-zero-too-big"] = edit(raw, (d + 1, hdr_byte1(1 << bits0, bits0)))
        else:                       # 5 bits of zero point: 31 is the largest, valid from width 5 on
            seeds[f"valid-{tag}-zero-31-bits{bits0}"] = edit(raw, (d + 1, hdr_byte1(31, bits0)))
        seeds[f"{tag}-sum-too-big"] = edit(raw, (d + 1, hdr_byte1(z0, 8)), (d + 3, hdr_byte1(z1, 8)))
        seeds[f"{tag}-second-header-bits8"] = edit(raw, (d + 3, hdr_byte1(z1, 8)))
        if hdr_bits(raw[d + 3]) < 5:
            seeds[f"{tag}-second-header-zero-31"] = edit(raw, (d + 3, hdr_byte1(31, hdr_bits(raw[d + 3]))))
    # scale codes: every one is valid (2^-20 .. 2^11.875)
    for w in (W2, W8):
        d, _ = offs[w]
        tag = w.split(".")[2]
        seeds[f"valid-{tag}-scale-code-0"] = edit(raw, (d, b"\x00"))
        seeds[f"valid-{tag}-scale-code-255"] = edit(raw, (d, b"\xff"), (d + 2, b"\xff"))
    d, n = offs[WPAD]
    seeds["padding-nonzero"] = edit(raw, (d + n - 1, b"\x01"))
    seeds["padding-first-byte"] = edit(raw, (d + n - 8, b"\x80"))

    for w, ne0 in ((W2, 128), (W8, 192)):
        p, _ = offs[F.perm_name(w)]
        tag = w.split(".")[2]
        seeds[f"{tag}-perm-out-of-range"] = edit(raw, (p, struct.pack("<i", ne0)))
        seeds[f"{tag}-perm-negative"] = edit(raw, (p + 4, struct.pack("<i", -1)))
        seeds[f"{tag}-perm-int-max"] = edit(raw, (p + 8, struct.pack("<i", 2**31 - 1)))
        seeds[f"{tag}-perm-repeated"] = edit(raw, (p + 4, raw[p: p + 4]))

    # truncations: in the KV section, the tensor infos, an MLWQ weight, a permutation, the last byte
    d2, n2 = offs[W2]
    p8, _ = offs[F.perm_name(W8)]
    for tag, cut in (("kv", 40), ("infos", tensor_info(raw, W4)[0]), ("weight", d2 + n2 // 2),
                     ("perm", p8 + 10), ("last-byte", len(raw) - 1)):
        seeds[f"truncated-{tag}"] = raw[:cut]

    # shapes and type ids in the tensor infos
    dims, tid, _ = tensor_info(raw, W3)
    seeds["ne0-64"] = edit(raw, (dims + 4, struct.pack("<q", 64)))
    seeds["ne0-100"] = edit(raw, (dims + 4, struct.pack("<q", 100)))
    seeds["ne0-0"] = edit(raw, (dims + 4, struct.pack("<q", 0)))
    seeds["ne1-huge"] = edit(raw, (dims + 12, struct.pack("<q", 1 << 40)))
    seeds["ne1-0"] = edit(raw, (dims + 12, struct.pack("<q", 0)))
    seeds["ne1-3-out-of-file"] = edit(raw, (dims + 12, struct.pack("<q", 3)))
    # ggml_nbytes wraps: ne0 * 34 overflows before the division by 64 and gives 138 bytes, which pad
    # to the 160 of the 2x128 MLWQ4 tensor (136 bytes) it replaces (gguf and the bounds check pass;
    # the MLWQ checks must refuse: rows x row size is not 138)
    d4, _, _ = tensor_info(raw, W4)
    seeds["ne0-wraps-nbytes"] = edit(raw, (d4 + 4, struct.pack("<qq", wrapping_ne0(F.type_size(4), 138), 1)))
    # 146 = GGML_TYPE_COUNT; 143 and 145: other MLWQ types (rows of another size); 140..142: format
    # version 1's MLWQ types, which gguf refuses naming the version
    for t in (139, 143, 145, 146, 1000, -1, 26, 0):
        seeds[f"type-{t}"] = edit(raw, (tid, struct.pack("<i", t)))
    for t in F.V1_TYPE_IDS:
        seeds[f"type-{t}-format-v1"] = edit(raw, (tid, struct.pack("<i", t)))
    # a whole file as format version 1 labelled it: every MLWQ type id 143 + k -> 140 + k, version 1
    v1 = []
    for w in (W2, W3, W4, W8, WPAD):
        at = tensor_info(raw, w)[1]
        b = F.width_of_type_id(struct.unpack_from("<i", raw, at)[0])
        v1.append((at, struct.pack("<i", F.V1_TYPE_IDS[b - 2])))
    seeds["format-v1-file"] = edit(raw, *v1, (kv_value(raw, F.KEY_FORMAT_VERSION) + 4, struct.pack("<I", 1)))
    pdims, ptid, _ = tensor_info(raw, F.perm_name(W3))
    seeds["perm-type-f32"] = edit(raw, (ptid, struct.pack("<i", 0)))
    seeds["perm-type-mlwq3"] = edit(raw, (ptid, struct.pack("<i", F.GGML_TYPE_ID[3])))
    seeds["perm-ne0-64"] = edit(raw, (pdims + 4, struct.pack("<q", 64)))
    seeds["perm-2d"] = edit(raw, (pdims, struct.pack("<I", 2)))

    # names: missing permutation, weight not '.weight', a duplicate name
    pn = F.perm_name(W3).encode()
    at = raw.index(pn)
    seeds["perm-renamed"] = edit(raw, (at + len(pn) - 1, b"X"))
    at = raw.index(W3.encode())
    seeds["weight-renamed"] = edit(raw, (at + len(W3) - 1, b"X"))
    seeds["duplicate-name"] = edit(raw, (at, W2.encode()))
    # names that differ only after a NUL: distinct for gguf, both '' for ggml (llama refuses them)
    seeds["duplicate-name-after-nul"] = edit(raw, (raw.index(F.perm_name(W8).encode()), b"\x00"),
                                             (raw.index(F.perm_name(WPAD).encode()), b"\x00"))

    # format_version: value, key name, value type
    k = kv_value(raw, F.KEY_FORMAT_VERSION)
    assert struct.unpack_from("<I", raw, k + 4)[0] == F.FORMAT_VERSION == 2
    seeds["format-version-0"] = edit(raw, (k + 4, struct.pack("<I", 0)))
    seeds["format-version-1"] = edit(raw, (k + 4, struct.pack("<I", 1)))
    seeds["format-version-3"] = edit(raw, (k + 4, struct.pack("<I", 3)))
    seeds["valid-format-version-int32"] = edit(raw, (k, struct.pack("<I", 5)))   # GGUF_TYPE_INT32, value 2
    seeds["format-version-float"] = edit(raw, (k, struct.pack("<I", 6)))         # GGUF_TYPE_FLOAT32
    seeds["format-version-key-renamed"] = edit(raw, (k - 1, b"X"))

    # structural variants, rewritten with GGUFWriter
    def three_d(name, data, ttype):
        return [(name, data.reshape(2, 1, -1) if name == W2 else data, ttype)]

    def embd(name, data, ttype):
        if name in (W4, F.perm_name(W4)):
            name = name.replace("blk.0.attn_v", "token_embd")
        return [(name, data, ttype)]

    def no_rows(name, data, ttype):
        return [(name, data[:0] if name == W3 else data, ttype)]

    def perm_short(name, data, ttype):
        return [(name, data[:64] if name == F.perm_name(W2) else data, ttype)]

    def reshaped(name, data, ttype):                 # 2 rows of 128 columns read as 4 rows of 64
        return [(name, data.reshape(4, -1) if name == W2 else data, ttype)]

    def keep(name, data, ttype):
        return [(name, data, ttype)]

    def as_u64(name, data, ttype):
        return keep(name, data, ttype)
    as_u64.skip = (F.KEY_FORMAT_VERSION,)
    as_u64.kv = lambda w, gguf: w.add_uint64(F.KEY_FORMAT_VERSION, F.FORMAT_VERSION)

    def as_str(name, data, ttype):
        return keep(name, data, ttype)
    as_str.skip = (F.KEY_FORMAT_VERSION,)
    as_str.kv = lambda w, gguf: w.add_string(F.KEY_FORMAT_VERSION, str(F.FORMAT_VERSION))

    def no_key(name, data, ttype):
        return keep(name, data, ttype)
    no_key.skip = (F.KEY_FORMAT_VERSION,)

    add_rewritten(seeds, mixed, tmp, (
        ("missing-perm", dropped(F.perm_name(W4))), ("orphan-perm", dropped(W4)), ("mlwq-3d", three_d),
        ("token-embd-mlwq", embd), ("valid-no-rows", no_rows), ("valid-format-version-uint64", as_u64),
        ("format-version-string", as_str), ("format-version-missing", no_key),
        ("perm-shorter-than-ne0", perm_short), ("weight-read-as-64-columns", reshaped)))

    seeds.update(v3_seeds(tmp))
    for name, data in seeds.items():
        (out / f"{name}.gguf").write_bytes(data)
    return len(seeds)


def v3_seeds(tmp: Path) -> dict[str, bytes]:
    """Format 3 (FORMAT.md): a valid export of the mixed layers, then one fault each in its 1-byte
    headers, row scales (I8 [rows]), widths (I8 [K]), I16 permutations and format version."""
    mixed = exported_file(tmp, "mixed", 3, file_format=3)
    raw = mixed.read_bytes()
    offs = data_offsets(mixed)
    seeds: dict[str, bytes] = {"valid-v3-mixed": raw}
    W2, W3, W8 = "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_output.weight"

    d2, _ = offs[W2]                                   # MLWQ2_V3, widths [1, 3], 2 rows of 128
    s2, _ = offs[F.scale_name(W2)]
    b2, _ = offs[F.bits_name(W2)]
    seeds["v3-zero-too-big"] = edit(raw, (d2, bytes([raw[d2] & 15 | 2 << 4])))   # width 1: zero <= 1
    seeds["valid-v3-zero-15-bits8"] = edit(raw, (offs[W8][0], bytes([raw[offs[W8][0]] & 15 | 15 << 4])))
    seeds["v3-scale-below-code-0"] = edit(raw, (d2, bytes([raw[d2] & 0xF0 | 15])), (s2, bytes([4 * 15 - 1])))
    seeds["valid-v3-row-scale-255"] = edit(raw, (s2, b"\xff"), (s2 + 1, b"\xff"))
    seeds["valid-v3-row-scale-60-step-15"] = edit(raw, (d2, bytes([raw[d2] & 0xF0 | 15])), (s2, bytes([60])))
    seeds["v3-width-0"] = edit(raw, (b2, b"\x00"))
    seeds["v3-width-9"] = edit(raw, (b2, b"\x09"))
    seeds["v3-width-negative"] = edit(raw, (b2, b"\xff"))                    # I8 read unsigned: 255
    seeds["v3-widths-too-wide"] = edit(raw, (b2 + 1, b"\x04"))              # 1 + 4 > K*b = 4
    p3, _ = offs[F.perm_name(W3)]                      # I16 [128]
    seeds["v3-perm-repeated"] = edit(raw, (p3 + 2, raw[p3: p3 + 2]))
    seeds["v3-perm-out-of-range"] = edit(raw, (p3, struct.pack("<h", 128)))
    seeds["v3-perm-negative"] = edit(raw, (p3, struct.pack("<h", -1)))
    _, ptid, _ = tensor_info(raw, F.perm_name(W3))
    seeds["v3-perm-type-f16"] = edit(raw, (ptid, struct.pack("<i", 1)))     # F16: the same bytes
    _, stid, _ = tensor_info(raw, F.scale_name(W3))
    seeds["v3-row-scales-type-i16"] = edit(raw, (stid, struct.pack("<i", 25)))   # I8 (24) -> I16: 2 bytes a row
    k = kv_value(raw, F.KEY_FORMAT_VERSION)
    assert struct.unpack_from("<I", raw, k + 4)[0] == F.V3_FORMAT_VERSION
    seeds["v3-under-version-2"] = edit(raw, (k + 4, struct.pack("<I", 2)))
    _, tid3, _ = tensor_info(raw, W3)
    seeds["v3-type-format2-id"] = edit(raw, (tid3, struct.pack("<i", F.GGML_TYPE_ID[3])))

    def short(target):
        return lambda name, data, ttype: [(name, data[:-1] if name == target else data, ttype)]

    add_rewritten(seeds, mixed, tmp, (
        ("v3-missing-row-scales", dropped(F.scale_name(W3))), ("v3-missing-widths", dropped(F.bits_name(W8))),
        ("v3-orphan-row-scales", dropped(W3, F.perm_name(W3), F.bits_name(W3))),
        ("v3-missing-perm", dropped(F.perm_name(W2))),
        ("v3-row-scales-short", short(F.scale_name(W8))), ("v3-widths-short", short(F.bits_name(W3)))))
    return seeds


# ---- row inputs ------------------------------------------------------------------------------

def q8_1_blocks(rng: np.random.Generator, n: int) -> bytes:
    out = bytearray()
    for _ in range(n):
        d = np.float16(rng.uniform(0.001, 0.05))
        qs = rng.integers(-128, 128, 32).astype(np.int8)
        out += d.tobytes() + np.float16(float(d) * int(qs.astype(np.int64).sum())).tobytes() + qs.tobytes()
    return bytes(out)


def rows_input(b: int, rows: np.ndarray, act: bytes) -> bytes:
    nrows, row_bytes = rows.shape
    K = row_bytes // F.type_size(b)
    return bytes([0, b - 2, K - 1, nrows]) + rows.tobytes() + act


def packed(rng: np.random.Generator, b: int, bits: list[int], nrows: int) -> np.ndarray:
    bits = np.array(bits, dtype=np.uint8)
    maxq = (1 << bits.astype(np.int64)) - 1
    codes = (rng.integers(0, 256, (nrows, bits.size * 64)) & np.repeat(maxq, 64)).astype(np.uint8)
    scale = grid_scales(rng, (nrows, bits.size))
    zero = (rng.integers(0, 256, (nrows, bits.size)) & np.minimum(maxq, F.ZERO_MAX)).astype(np.uint8)
    return F.pack_rows(codes, scale, zero, bits, b)


def row_seeds(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(6)
    seeds: dict[str, bytes] = {}
    mixes = {2: [[2], [1, 3], [3, 1, 2], [1, 1, 4], [8, 1, 1, 1, 1, 1, 1, 2]],
             3: [[3], [2, 4], [5, 1, 3], [3, 3, 2], [1, 5]],
             4: [[4], [8, 8, 1, 1, 1, 1], [7, 1], [6, 2], [5, 3], [4, 4, 3]]}
    for b, ms in mixes.items():
        for i, bits in enumerate(ms):
            rows = packed(rng, b, bits, 2)
            act = q8_1_blocks(rng, 2 * len(bits))
            seeds[f"mlwq{b}-{i}"] = rows_input(b, rows, act)
            K = len(bits)
            # (header byte of row 1, new value from the old one); headers at 2j (scale), 2j + 1
            faults = {"first-bits8": (1, lambda v: (v & 31) | 7 << 5),         # codes past the row
                      "last-bits8": (2 * K - 1, lambda v: (v & 31) | 7 << 5),
                      "first-bits1": (1, lambda v: (v & 1)),                    # later codes shift
                      "zero31": (1, lambda v: v | 31),                          # too big below 5 bits
                      "scale0": (0, lambda v: 0), "scale255": (0, lambda v: 255)}
            for tag, (off, fn) in faults.items():
                bad = rows.copy()
                bad[1, off] = fn(int(bad[1, off]))
                seeds[f"mlwq{b}-{i}-{tag}"] = rows_input(b, bad, act)
            # row 1 stops at block 0 and the activations' last scale is inf: the row adds nothing
            # there (0, not 0 * inf), whichever kernel (tile or row panel) runs it
            inf_act = bytearray(act)
            inf_act[(2 * K - 1) * 36:(2 * K - 1) * 36 + 2] = np.float16(np.inf).tobytes()
            bad = rows.copy()
            bad[1, 1] = (int(bad[1, 1]) & 31) | 7 << 5
            seeds[f"mlwq{b}-{i}-dead-inf"] = rows_input(b, bad, bytes(inf_act))
            if int(sum(bits)) < K * b:
                bad = rows.copy()
                bad[0, -1] = 1
                seeds[f"mlwq{b}-{i}-padding"] = rows_input(b, bad, act)
    seeds["no-rows"] = bytes([0, 1, 1, 0])
    # shapes (mode 1): type, ne0 int16, nrows int8, data
    r = packed(rng, 3, [3, 3], 2)
    for tag, ne0, nrows, data in (("ok", 128, 2, r.tobytes()), ("short", 128, 2, r.tobytes()[:-1]),
                                  ("ne0-100", 100, 2, r.tobytes()), ("ne0-neg", -128, 2, r.tobytes()),
                                  ("nrows-neg", 128, -2, r.tobytes()), ("nrows-0", 128, 0, b"")):
        seeds[f"shape-{tag}"] = bytes([1, 1]) + struct.pack("<hb", ne0, nrows) + data
    # permutations (mode 2)
    p = rng.permutation(64).astype(np.int32)
    seeds["perm-ok"] = b"\x02" + p.tobytes()
    for tag, idx, val in (("range", 0, 64), ("neg", 1, -1), ("repeat", 2, int(p[3]))):
        q = p.copy()
        q[idx] = val
        seeds[f"perm-{tag}"] = b"\x02" + q.tobytes()
    seeds["perm-empty"] = b"\x02"
    # foreign type ids (mode 3): format version 1's (140..142) are not MLWQ types any more
    for t in (139, 140, 141, 142, 146, 26, 0, -1, 2**31 - 1, 144):
        seeds[f"type-{t & 0xffffffff}"] = b"\x03" + struct.pack("<ih", t, 64) + bytes(20)
    for name, data in seeds.items():
        (out / f"{name}.bin").write_bytes(data)
    return len(seeds)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    tmp = Path(tempfile.mkdtemp(prefix="mlwq-seeds-"))
    try:
        n_gguf = gguf_seeds(out / "gguf", tmp)
        n_rows = row_seeds(out / "rows")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"make_seeds: {n_gguf} gguf seeds, {n_rows} row seeds in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
