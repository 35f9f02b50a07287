"""Export an mlwq checkpoint to a GGUF file for the patched llama.cpp (ggml_patch/).

The output is the source GGUF (every KV, the tokenizer, every tensor that was not quantized,
byte for byte: SmolLM2's token_embd stays Q8_0 and its norms F32, so these are lossless against the
reference, which is the dequantized source) with each quantized linear layer replaced by an MLWQ<b>
tensor plus its I32 column permutation ``<base>.mlwq_perm`` (ggml_patch/FORMAT.md).

Checkpoint contract (written by ``mlwq quantize``, see mlwq/checkpoint.py):
    DIR/mlwq_checkpoint.json   {"format": "mlwq-checkpoint", "version": 1, "source": ..., "group_size": 64,
                                "layers": {HF module name: {...}}, ...}
    DIR/quantized.safetensors  N.qcodes uint8 [out, in] (permuted columns), N.perm int32 [in],
                               N.scale float32 [out, in/64] (on the scale grid), N.zero uint8 [out, in/64], N.group_bits uint8 [in/64]

Rows of q_proj / k_proj: transformers un-permutes them when it loads a llama GGUF (rope layout), so
the checkpoint holds them in Hugging Face order; the exporter applies llama.cpp's permutation
again (rows only: every quantization group lies inside one row, so this is exact).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import mlwq_format as F

from mlwq.checkpoint import CHECKPOINT_JSON, CHECKPOINT_TENSORS, type_width  # noqa: E402  (the checkpoint contract)
from mlwq.errors import MLWQError  # noqa: E402
from mlwq.model_io import ARCHITECTURES, spec_of_gguf_arch  # noqa: E402  (the architecture table)


class ExportError(Exception):
    """A checkpoint or source that cannot be exported, with what to do about it."""


@dataclass
class ExportReport:
    path: str
    file_bytes: int
    n_params: int                    # elements of every model tensor (permutations excluded)
    mlwq_params: int                 # elements of the MLWQ linear layers
    mlwq_bytes: int                  # their bytes in the file: rows (headers + codes + padding) + side tensors
    mlwq_code_bits: int              # sum of the block widths times 64 times rows
    embedding_type: str = ""         # token_embd's type in the file
    file_format: int = 3             # mlwq.format_version written
    lifted_blocks: int = 0           # format 3: blocks requantized at their row's lowest scale (lift_small_scales)
    layers: dict = field(default_factory=dict)

    @property
    def bpw_file(self) -> float:
        return 8 * self.file_bytes / self.n_params

    @property
    def bpw_mlwq(self) -> float:
        return 8 * self.mlwq_bytes / max(self.mlwq_params, 1)

    @property
    def code_bpw_mlwq(self) -> float:
        return self.mlwq_code_bits / max(self.mlwq_params, 1)

    def summary(self) -> str:
        return (f"wrote {self.path}: {self.file_bytes} bytes ({self.file_bytes / 2**20:.2f} MiB), "
                f"MLWQ format {self.file_format}, {len(self.layers)} layers: {self.bpw_mlwq:.4f} bits/weight "
                f"(codes {self.code_bpw_mlwq:.4f} + headers, scales, widths, permutations), "
                f"whole file {self.bpw_file:.4f} bits/weight over {self.n_params} parameters"
                + (f", token_embd {self.embedding_type}" if self.embedding_type else ""))


def gguf_name(hf_name: str, spec=None) -> str:
    """GGUF tensor base name of an HF linear module (model.layers.3.mlp.down_proj -> blk.3.ffn_down)
    in the architecture table's entry `spec` (default: llama's)."""
    spec = spec or ARCHITECTURES["llama"]
    if hf_name == "lm_head":
        return "output"
    names = dict(spec.gguf_tensors)
    prefix, _, rest = hf_name.partition(f"{spec.blocks}.")
    block, _, linear = rest.partition(".")
    if prefix or not block.isdigit() or linear not in names:
        raise ExportError(f"no GGUF name for layer {hf_name!r} (known: {spec.blocks}.N.{{{','.join(names)}}} "
                          "and lm_head)")
    return f"blk.{block}.{names[linear]}"


def rope_row_order(rows: int, n_head: int) -> np.ndarray:
    """Row index map of llama.cpp's q/k permutation: gguf_rows = hf_rows[order]
    (convert_hf_to_gguf.py LlamaModel.permute: reshape(n_head, 2, rows/n_head/2).swapaxes(1, 2))."""
    if rows % (2 * n_head):
        raise ExportError(f"{rows} rows do not split into {n_head} heads of rope pairs")
    idx = np.arange(rows)
    return idx.reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)


def _gguf():
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - gguf is a dependency
        raise ExportError("the gguf package is missing: run `bash ggml_patch/build.sh`") from e
    if not all(hasattr(gguf.GGMLQuantizationType, F.TYPE_NAME[b]) for b in F.WIDTHS):
        raise ExportError("the installed gguf package has no MLWQ types: install the patched gguf-py with "
                          "`bash ggml_patch/build.sh`")
    for b in F.WIDTHS:
        for name, tid, size in ((F.TYPE_NAME[b], F.GGML_TYPE_ID[b], F.type_size(b)),
                                (F.V3_TYPE_NAME[b], F.V3_GGML_TYPE_ID[b], F.v3_type_size(b))):
            qt = getattr(gguf.GGMLQuantizationType, name, None)
            if qt is None or int(qt) != tid or gguf.GGML_QUANT_SIZES[qt] != (F.QK, size):
                raise ExportError(f"the installed gguf package does not define {name} as id {tid} {(F.QK, size)}: "
                                  "rebuild with `bash ggml_patch/build.sh`")
    return gguf


def load_checkpoint(ckpt_dir: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The checkpoint as numpy arrays; reading and version checks are mlwq.checkpoint's."""
    from mlwq.checkpoint import load
    from mlwq.errors import MLWQError

    try:
        meta, tensors = load(ckpt_dir)
    except MLWQError as e:
        raise ExportError(f"{e} (write one with `mlwq quantize`)") from None
    if int(meta.get("group_size", F.QK)) % F.QK:
        raise ExportError(f"group_size {meta.get('group_size')} is not a multiple of the MLWQ block ({F.QK})")
    return meta, {name: t.numpy() for name, t in tensors.items()}


def layer_tensors(tensors: dict[str, np.ndarray], name: str):
    try:
        codes, perm = tensors[f"{name}.qcodes"], tensors[f"{name}.perm"]
        scale, zero, bits = tensors[f"{name}.scale"], tensors[f"{name}.zero"], tensors[f"{name}.group_bits"]
    except KeyError as e:
        raise ExportError(f"checkpoint layer {name} lacks tensor {e.args[0]}") from None
    return codes, perm.astype(np.int32, copy=False), scale, zero, bits


def layer_width(bits: np.ndarray) -> int:
    """checkpoint.type_width, refused when no MLWQ type has that width."""
    K = bits.size
    b = type_width(bits.astype(np.int64))
    if b not in F.WIDTHS:
        raise ExportError(f"mean block width {bits.astype(np.int64).sum() / K:.3f} needs MLWQ{b}, "
                          f"which does not exist (types: {', '.join(F.TYPE_NAME.values())})")
    return b


def _field_value(field):
    return field.contents()


def _copy_kvs(reader, writer, gguf, skip: set[str]) -> None:
    for fld in reader.fields.values():
        if fld.name.startswith("GGUF.") or fld.name == gguf.Keys.General.ARCHITECTURE or fld.name in skip:
            continue
        vtype = fld.types[0]
        sub_type = fld.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(fld.name, _field_value(fld), vtype, sub_type=sub_type)


def _fsync_replace(tmp: Path, dst: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    try:
        dfd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def source_gguf(meta: dict, source: str | os.PathLike | None) -> Path:
    src = Path(source) if source is not None else Path(str(meta.get("source", "")))
    if src.is_dir():
        found = sorted(src.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        raise ExportError(f"source {src} is a directory without exactly one .gguf file: the GGUF exporter copies the "
                          f"tokenizer and metadata from a GGUF; pass --source FILE.gguf (convert a Hugging Face "
                          f"model with llama.cpp's convert_hf_to_gguf.py first)")
    if not src.is_file():
        raise ExportError(f"source GGUF {str(src)!r} not found (the checkpoint's 'source'); pass --source FILE.gguf")
    return src


# token_embd types any row width that is a multiple of 32 allows (K-quants need 256)
EMBEDDING_TYPES = ("F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")


def _float_rows(t, gguf) -> np.ndarray:
    """A source tensor's values as float32 rows [n_rows, ne0] (any type, F32 included)."""
    values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    return values.astype(np.float32).reshape(-1, int(t.shape[0]))


def requantized(t, type_name: str, gguf):
    """(data, type) of a source tensor dequantized and quantized again to type_name (llama.cpp's
    reference rounding, as llama-quantize does without an importance matrix)."""
    qtype = gguf.GGMLQuantizationType[type_name]
    if t.tensor_type == qtype:
        return np.asarray(t.data), qtype
    ne0 = int(t.shape[0])
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if ne0 % block:
        raise ExportError(f"{t.name} rows of {ne0} are not a multiple of {type_name}'s block of {block}")
    return gguf.quants.quantize(_float_rows(t, gguf), qtype), qtype


def rotated_tensors(reader, gguf, kind: str, seed: int, type_name: str | None) -> dict:
    """token_embd, output and the norms of a model quantized with a residual rotation
    (mlwq/rotation.py): E Q, (head * g_final) Q as a tensor of its own, every norm's scale 1 (folded
    into the linear layers at quantization time). name -> (data, ggml type). The embedding and
    the head take type_name, or the source embedding's type."""
    from mlwq.rotation import random_orthogonal

    by = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in by or "output_norm.weight" not in by:
        raise ExportError("a rotated checkpoint needs the source's token_embd and output_norm")
    emb = by["token_embd.weight"]
    qtype = gguf.GGMLQuantizationType[type_name] if type_name else emb.tensor_type
    if qtype.name not in EMBEDDING_TYPES:
        qtype = gguf.GGMLQuantizationType.Q8_0
    E = _float_rows(emb, gguf).astype(np.float64)
    q = random_orthogonal(E.shape[1], kind, seed).numpy()
    g = _float_rows(by["output_norm.weight"], gguf).astype(np.float64)[0]
    head = _float_rows(by["output.weight"], gguf).astype(np.float64) if "output.weight" in by else E
    out = {"token_embd.weight": (gguf.quants.quantize((E @ q).astype(np.float32), qtype), qtype),
           "output.weight": (gguf.quants.quantize(((head * g) @ q).astype(np.float32), qtype), qtype)}
    for name, t in by.items():
        if re.fullmatch(r"output_norm\.weight|blk\.\d+\.(attn_norm|ffn_norm)\.weight", name):
            out[name] = (np.ones(int(t.shape[0]), dtype=np.float32), gguf.GGMLQuantizationType.F32)
        elif name.endswith("norm.weight"):
            raise ExportError(f"{name}: a norm the residual rotation cannot fold")
    return out


def export_gguf(ckpt_dir: str | os.PathLike, out: str | os.PathLike, source: str | os.PathLike | None = None,
                log=print, embedding_type: str | None = None, file_format: int | None = None) -> ExportReport:
    """Write the GGUF for the patched llama.cpp. Returns the byte and bit counts of the written file.

    A checkpoint of a reduced model (meta "max_blocks": n, see mlwq.api.truncate_blocks) gives a
    GGUF of the first n blocks, block_count rewritten. embedding_type (EMBEDDING_TYPES) requantizes
    token_embd from the source's values; None keeps the source's bytes. file_format: 3 or 2
    (ggml_patch/FORMAT.md); None takes the one the checkpoint was quantized for (2 for checkpoints
    from before format 3). Format 2 holds any checkpoint; format 3 only one quantized for it."""
    if embedding_type is not None and embedding_type not in EMBEDDING_TYPES:
        raise ExportError(f"embedding type {embedding_type!r} is not one of {', '.join(EMBEDDING_TYPES)}")
    gguf = _gguf()
    meta, tensors = load_checkpoint(ckpt_dir)
    if file_format is None:
        file_format = int((meta.get("config") or {}).get("file_format", 2))
    if file_format not in (2, F.V3_FORMAT_VERSION):
        raise ExportError(f"MLWQ file format {file_format} is not one of 2, {F.V3_FORMAT_VERSION}")
    src = source_gguf(meta, source)
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    try:
        spec = spec_of_gguf_arch(arch)
    except MLWQError as e:
        raise ExportError(str(e)) from None
    max_blocks = meta.get("max_blocks")
    skip_kvs = {gguf.Keys.General.FILE_TYPE, F.KEY_FORMAT_VERSION}
    if max_blocks is not None:
        skip_kvs.add(f"{arch}.block_count")
    n_head = int(reader.fields[f"{arch}.attention.head_count"].contents())
    kv_field = reader.fields.get(f"{arch}.attention.head_count_kv")
    n_head_kv = int(kv_field.contents()) if kv_field is not None else n_head

    config = meta.get("config") or {}
    rotated = {}
    if config.get("rotation"):
        if arch != "llama":
            raise ExportError(f"a rotated checkpoint of a {arch} model: rotation supports llama")
        rotated = rotated_tensors(reader, gguf, config["rotation"], int(config.get("seed", 0)), embedding_type)

    by_gguf = {}
    for hf_name in meta.get("layers", {}):
        by_gguf[gguf_name(hf_name, spec) + ".weight"] = hf_name
    src_names = {t.name for t in reader.tensors}
    missing = sorted(set(by_gguf) - src_names)
    if missing:
        raise ExportError(f"checkpoint layers not in the source {src.name}: {', '.join(missing[:5])}"
                          f"{' ...' if len(missing) > 5 else ''}")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), arch)

    report = ExportReport(path=str(out), file_bytes=0, n_params=0, mlwq_params=0, mlwq_bytes=0, mlwq_code_bits=0,
                          file_format=file_format)
    width_params: dict[int, int] = {}
    for t in reader.tensors:
        m = re.match(r"^blk\.(\d+)\.", t.name)
        if max_blocks is not None and m and int(m.group(1)) >= int(max_blocks):
            continue
        n_elem = int(np.prod([int(x) for x in t.shape]))
        report.n_params += n_elem
        hf_name = by_gguf.get(t.name)
        if hf_name is None:
            data, qtype = np.asarray(t.data), t.tensor_type
            if t.name in rotated:
                data, qtype = rotated.pop(t.name)
            elif t.name == "token_embd.weight" and embedding_type is not None:
                data, qtype = requantized(t, embedding_type, gguf)
            if t.name == "token_embd.weight":
                report.embedding_type = qtype.name
            writer.add_tensor(t.name, data, raw_dtype=qtype)
            continue
        codes, perm, scale, zero, bits = layer_tensors(tensors, hf_name)
        ne0, rows = (int(x) for x in t.shape[:2])
        if codes.shape != (rows, ne0):
            raise ExportError(f"layer {hf_name}: codes {codes.shape}, source tensor {t.name} is [{rows}, {ne0}]")
        b = layer_width(bits)
        try:
            F.validate_perm(perm, ne0)
            if spec.rope_permuted and t.name.split(".")[-2] in ("attn_q", "attn_k"):
                heads = n_head if t.name.split(".")[-2] == "attn_q" else n_head_kv
                order = rope_row_order(rows, heads)
                codes, scale, zero = codes[order], scale[order], zero[order]
            if file_format == 2:
                data = F.pack_rows(codes, scale, zero, bits, b)
                side = [(F.perm_name(t.name), perm)]
                qtype = gguf.GGMLQuantizationType[F.TYPE_NAME[b]]
            else:
                codes, scale, zero, n_lifted = F.lift_small_scales(codes, scale, zero, bits)
                report.lifted_blocks += n_lifted
                data, row_scale = F.pack_rows_v3(codes, scale, zero, bits, b)
                side = [(F.perm_name(t.name), F.validate_perm16(perm, ne0)),
                        (F.scale_name(t.name), row_scale.view(np.int8)),
                        (F.bits_name(t.name), bits.astype(np.int8))]
                qtype = gguf.GGMLQuantizationType[F.V3_TYPE_NAME[b]]
        except ValueError as e:
            hint = " (export it with --format 2)" if file_format == 3 and "format 3 cannot" in str(e) else ""
            raise ExportError(f"layer {hf_name}: {e}{hint}") from None
        writer.add_tensor(t.name, data, raw_dtype=qtype)
        for name, arr in side:
            writer.add_tensor(name, arr)
        nbytes = data.nbytes + sum(arr.nbytes for _, arr in side)
        code_bits = int(bits.astype(np.int64).sum()) * F.QK * rows
        report.mlwq_params += rows * ne0
        report.mlwq_bytes += nbytes
        report.mlwq_code_bits += code_bits
        width_params[b] = width_params.get(b, 0) + rows * ne0
        report.layers[t.name] = {"hf_name": hf_name, "type": qtype.name, "shape": [rows, ne0],
                                 "bytes": nbytes, "bits_per_weight": 8 * nbytes / (rows * ne0),
                                 "code_bits_per_weight": code_bits / (rows * ne0)}
    if not report.layers:
        raise ExportError(f"checkpoint {ckpt_dir} has no quantized layers")
    for name, (data, qtype) in rotated.items():       # the untied head of a rotated tied model
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        report.n_params += data.shape[0] * (data.shape[1] // type_size) * block
        writer.add_tensor(name, data, raw_dtype=qtype)

    main_width = max(width_params, key=lambda b: width_params[b])
    _copy_kvs(reader, writer, gguf, skip=skip_kvs)
    if max_blocks is not None:
        writer.add_uint32(f"{arch}.block_count", int(max_blocks))
    writer.add_uint32(gguf.Keys.General.FILE_TYPE, F.LLAMA_FTYPE[main_width])
    writer.add_uint32(F.KEY_FORMAT_VERSION, file_format)
    if report.lifted_blocks:
        log(f"{report.lifted_blocks} blocks lay more than 7.5 octaves below their row's largest scale: "
            "requantized at the lowest scale format 3 holds")
    writer.add_uint32("mlwq.group_size", int(meta.get("group_size", F.QK)))
    writer.add_string("mlwq.source", os.path.basename(str(meta.get("source", src))))
    writer.add_string("mlwq.config", json.dumps(meta.get("config", {}), sort_keys=True))
    writer.add_float32("mlwq.code_bits_per_weight", float(report.code_bpw_mlwq))
    writer.add_float32("mlwq.bits_per_weight", float(report.bpw_mlwq))

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        _fsync_replace(tmp, out)
    except BaseException:              # disk full, interrupt: no partial file stays behind
        tmp.unlink(missing_ok=True)
        raise
    report.file_bytes = out.stat().st_size
    log(report.summary())
    return report


def write_reduced_gguf(src: str | os.PathLike, dst: str | os.PathLike, n_blocks: int) -> Path:
    """Copy of a GGUF with only its first n_blocks repeating blocks (block_count rewritten): a small
    real model for tests. Tensors outside blk.* (embeddings, output norm) are kept."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), arch)
    _copy_kvs(reader, writer, gguf, skip={f"{arch}.block_count"})
    writer.add_uint32(f"{arch}.block_count", int(n_blocks))
    for t in reader.tensors:
        m = re.match(r"^blk\.(\d+)\.", t.name)
        if m and int(m.group(1)) >= n_blocks:
            continue
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _fsync_replace(tmp, dst)
    return dst


def read_mlwq_tensor(path: str | os.PathLike, name: str):
    """(W in original column order fp32 [rows, ne0], b) of an MLWQ tensor of an exported GGUF."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in reader.tensors}
    t = by_name[name]
    b, b3 = F.width_of_type_id(int(t.tensor_type)), F.width_of_v3_type_id(int(t.tensor_type))
    if b is None and b3 is None:
        raise ExportError(f"{name} is {t.tensor_type.name}, not an MLWQ type")
    ne0, rows = (int(x) for x in t.shape[:2])
    data = np.asarray(t.data).reshape(rows, -1)
    perm = np.asarray(by_name[F.perm_name(name)].data).astype(np.int64)
    if b3 is not None:                  # format 3: the loader's expansion, then format 2's reading
        b = b3
        perm = perm.astype(np.int16).view(np.uint16)
        data = F.expand_v3(data, np.asarray(by_name[F.scale_name(name)].data).view(np.uint8),
                           np.asarray(by_name[F.bits_name(name)].data).view(np.uint8), ne0, b)
    return F.unpermute_columns(F.dequantize_rows(data, ne0, b), perm.astype(np.int32)), b
