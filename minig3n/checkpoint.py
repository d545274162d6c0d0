"""Reading a Hugging Face checkpoint directory, unmodified, with NumPy only.

The idea: a safetensors file is an 8-byte little-endian header length, a JSON header that gives each
tensor's dtype, shape and byte range, then the raw bytes. We memory-map the file and hand out views of
those byte ranges, converted to the float dtype the caller asked for (float32 by default, float64 for
verification) only when a tensor is used. BF16 has no NumPy dtype: its 16 bits are the top half of a
float32, so widening is a shift (exact, bit-identical to ``torch.bfloat16 -> float32``).

The per-layer-embedding table (``embed_tokens_per_layer``, 262144 x 7680 = 2 B parameters in E2B) is never
made resident: ``Checkpoint.rows`` gathers only the rows of the ids at hand from the memory map.

A directory holds either one ``model.safetensors`` or shards listed in ``model.safetensors.index.json``
(``{"weight_map": {tensor name: shard file}}``), next to ``config.json``. Tensor names are the HF names
(``model.language_model.layers.3.altup.prediction_coefs.weight``); text-only checkpoints
(``Gemma3nForCausalLM``) use ``model.layers...`` instead of ``model.language_model.layers...``.

Source: the safetensors format (https://github.com/huggingface/safetensors, README "Format").
Left out: writing (see ``save_safetensors`` for the small writer minig3n needs), integer and fp8 tensors
(Gemma 3n checkpoints hold only floats), and the ``lm_head.weight`` of untied models (Gemma 3n ties it).
"""
from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .atomic import atomic_output
from .config import Gemma3nConfig, read_json
from .errors import CheckpointError, ConfigError

# safetensors dtype name -> (numpy storage dtype, bytes per element)
_STORAGE = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
_NUMPY_TO_ST = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16"}


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 BF16 bit patterns -> float32, exactly (a BF16 number is the top 16 bits of a float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 BF16 bit patterns, rounding to nearest even (as torch does). For writing tests."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


# safetensors dtype name -> bits per element: every dtype the format defines (safetensors 0.8), so that what
# is a valid file is decided exactly as the safetensors library decides it. minig3n computes with the four
# float dtypes of _STORAGE; a file holding others opens, and reading such a tensor raises CheckpointError.
_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
         "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
         "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}
MAX_HEADER_BYTES = 100_000_000      # the safetensors library's cap (MAX_HEADER_SIZE)
MAX_JSON_DEPTH = 127                # deepest nesting of [ and { the library's JSON parser accepts
_U64 = 2 ** 64 - 1                  # shapes, offsets and byte counts are u64 in the library


class _Obj(dict):
    """A JSON object that remembers which keys it saw more than once."""
    dups: tuple = ()


def _pairs(pairs) -> _Obj:
    obj = _Obj(pairs)
    if len(obj) != len(pairs):
        seen, dups = set(), []
        for k, _ in pairs:
            if k in seen:
                dups.append(k)
            seen.add(k)
        obj.dups = tuple(dups)
    return obj


def _no_constant(token):
    raise ValueError(f"{token} is not a JSON value")


def _parse_int(s: str):
    if s == "-0":
        return -0.0               # the library's parser reads -0 as a float, which no integer field takes
    v = int(s)                    # more than 4300 digits: ValueError (Python's limit), out of range anyway
    if abs(v) > 1.7976931348623157e308:
        raise ValueError(f"number {s[:20]}... out of range")
    return v


def _parse_float(s: str) -> float:
    v = float(s)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"number {s[:20]} out of range")
    return v


def _json_depth(text: str) -> int:
    """Deepest nesting of [ and { outside strings (a linear scan, so 10**6 brackets cost no recursion)."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _has_lone_surrogate(v) -> bool:
    if isinstance(v, str):
        try:
            v.encode("utf-8")
            return False
        except UnicodeEncodeError:
            return True
    if isinstance(v, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(x) for k, x in v.items())
    if isinstance(v, list):
        return any(_has_lone_surrogate(x) for x in v)
    return False


def _is_u64(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U64


def parse_header(header_bytes: bytes, where: str) -> tuple[dict, dict]:
    """The JSON header of a safetensors file -> ({name: {"dtype", "shape", "data_offsets"}}, metadata).

    Validated as the safetensors library validates it (a file one accepts, the other accepts), with one
    rule stricter: a tensor name given twice is an error (the library keeps the last one silently). Raises
    CheckpointError naming ``where`` and the first field at fault. Offsets are relative to the data section;
    the ranges are checked to tile it from byte 0 (the caller checks that they end where the file ends)."""
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}: corrupt header: not UTF-8 (byte {e.start}); not a safetensors file?") from None
    if _json_depth(text) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{where}: corrupt header: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        header = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant, parse_int=_parse_int,
                            parse_float=_parse_float)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{where}: corrupt header: not valid JSON ({e}); not a safetensors file?") from None
    if not isinstance(header, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(header), "a number")
        raise CheckpointError(f"{where}: corrupt header: expected a JSON object, got {kind}; not a safetensors file?")
    if _has_lone_surrogate(header):
        raise CheckpointError(f"{where}: corrupt header: a string holds an unpaired UTF-16 surrogate escape")
    for k in header.dups:
        what = "'__metadata__' appears" if k == "__metadata__" else f"tensor '{k}' is listed"
        raise CheckpointError(f"{where}: corrupt header: {what} more than once")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{where}: corrupt header: '__metadata__' must be an object of strings, got "
                              f"{json.dumps(metadata)[:80]}")
    tensors = {}
    for name, info in header.items():
        bad = f"{where}: corrupt header entry for tensor '{name}'"
        if isinstance(info, list):          # the library also reads [dtype, shape, data_offsets]
            if len(info) != 3:
                raise CheckpointError(f"{bad}: expected an object with dtype, shape, data_offsets")
            info = dict(zip(("dtype", "shape", "data_offsets"), info))
        elif isinstance(info, dict):
            for k in getattr(info, "dups", ()):
                if k in ("dtype", "shape", "data_offsets"):
                    raise CheckpointError(f"{bad}: '{k}' is given more than once")
            missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
            if missing:
                raise CheckpointError(f"{bad}: '{missing[0]}' is missing")
        else:
            raise CheckpointError(f"{bad}: expected an object with dtype, shape, data_offsets, got "
                                  f"{json.dumps(info)[:80]}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if isinstance(dtype, dict) and len(dtype) == 1 and next(iter(dtype.values())) is None:
            dtype = next(iter(dtype))        # {"F32": null}: serde's map form of the same enum value
        if not isinstance(dtype, str) or dtype not in _BITS:
            raise CheckpointError(f"{bad}: dtype {json.dumps(dtype)[:40]} is not a safetensors dtype "
                                  f"({', '.join(_BITS)})")
        if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
            raise CheckpointError(f"{bad}: shape {json.dumps(shape)[:60]} must be a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_u64(o) for o in offsets)):
            raise CheckpointError(f"{bad}: data_offsets {json.dumps(offsets)[:60]} must be two non-negative "
                                  "integers [begin, end]")
        tensors[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}
    # The byte ranges, in order, must tile the data section: each starts where the previous one ends.
    start, prev = 0, None
    for name, t in sorted(tensors.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
        begin, end = t["data_offsets"]
        if begin != start or end < begin:
            after = f"where tensor '{prev}' ends" if prev is not None else "the start of the data section"
            raise CheckpointError(f"{where}: corrupt header: tensor '{name}' has byte range [{begin}, {end}); "
                                  f"expected it to begin at byte {start}, {after} (ranges must be contiguous, "
                                  "non-overlapping and cover the data exactly)")
        n = 1
        for d in t["shape"]:
            n *= d
            if n > _U64:
                raise CheckpointError(f"{where}: corrupt header: tensor '{name}' shape {t['shape']} has more "
                                      "elements than a 64-bit count holds")
        bits = n * _BITS[t["dtype"]]
        if bits > _U64:
            raise CheckpointError(f"{where}: corrupt header: tensor '{name}' {t['dtype']}{t['shape']} is larger "
                                  "than a 64-bit byte count holds")
        if bits % 8:
            raise CheckpointError(f"{where}: corrupt header: tensor '{name}' {t['dtype']}{t['shape']} does not "
                                  "fill whole bytes")
        if end - begin != bits // 8:
            raise CheckpointError(f"{where}: corrupt header: tensor '{name}' {t['dtype']}{t['shape']} needs "
                                  f"{bits // 8} bytes, its byte range holds {end - begin}")
        start, prev = end, name
    return tensors, metadata


class SafetensorsFile:
    """One memory-mapped .safetensors file: ``names``, ``info(name)``, ``raw(name)`` (a view, no copy).

    Opening validates the whole header (``parse_header``) and checks that the byte ranges end exactly where
    the file ends, so every later ``raw`` reads inside the file; nothing is read beyond the 8-byte length
    until that length is known to fit both the file and the 100 MB header cap."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: truncated file ({size} bytes; a safetensors file starts "
                                          "with an 8-byte header length)")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8:
                    raise CheckpointError(f"{self.path}: corrupt header (header length {n} is larger than the "
                                          f"{size - 8} bytes after it; truncated or not a safetensors file)")
                if n > MAX_HEADER_BYTES:
                    raise CheckpointError(f"{self.path}: corrupt header (header length {n} bytes exceeds the "
                                          f"{MAX_HEADER_BYTES:,}-byte limit of the safetensors format)")
                header_bytes = f.read(n)
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        except PermissionError:
            raise CheckpointError(f"{self.path}: permission denied (cannot read the file)") from None
        self.header, self.metadata = parse_header(header_bytes, str(self.path))
        self.data_start = 8 + n
        data_end = max((t["data_offsets"][1] for t in self.header.values()), default=0)
        if self.data_start + data_end > size:
            last = max(self.header, key=lambda k: self.header[k]["data_offsets"][1])
            raise CheckpointError(f"{self.path}: truncated file: tensor '{last}' ends at byte "
                                  f"{self.data_start + data_end}, the file has {size}")
        if self.data_start + data_end < size:
            raise CheckpointError(f"{self.path}: corrupt file: {size - self.data_start - data_end} bytes after the "
                                  f"last tensor (byte {self.data_start + data_end}); the tensors must cover the "
                                  "data section exactly")
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if size > 0 else None

    @property
    def names(self) -> list[str]:
        return list(self.header)

    def info(self, name: str) -> tuple[str, tuple]:
        h = self.header[name]
        return h["dtype"], tuple(h["shape"])

    def storage(self, name: str) -> np.dtype:
        """The NumPy storage dtype of a tensor (uint16 for BF16); CheckpointError for the dtypes minig3n
        does not compute with (integers, bool, fp8, complex)."""
        dtype = self.header[name]["dtype"]
        if dtype not in _STORAGE:
            raise CheckpointError(f"{self.path}: tensor '{name}' has dtype {dtype}; minig3n reads "
                                  f"{', '.join(_STORAGE)} only")
        return _STORAGE[dtype]

    def raw(self, name: str) -> np.ndarray:
        """The stored values as a read-only view into the memory map (uint16 bit patterns for BF16)."""
        h = self.header[name]
        storage = self.storage(name)
        begin, end = h["data_offsets"]
        if begin == end:
            return np.zeros(h["shape"], dtype=storage)
        flat = self._map[self.data_start + begin:self.data_start + end].view(storage)
        return flat.reshape(h["shape"])


def to_float(raw: np.ndarray, st_dtype: str, dtype) -> np.ndarray:
    """Stored values -> a fresh array of float ``dtype`` (every conversion is exact: widening only)."""
    if st_dtype == "BF16":
        return bf16_bits_to_float32(np.asarray(raw)).astype(dtype, copy=False)
    return np.array(raw, dtype=dtype)


def _open_file(path: Path) -> SafetensorsFile:
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a safetensors file")
    return SafetensorsFile(path)


def read_index(index: Path) -> dict[str, str]:
    """``model.safetensors.index.json`` -> its weight_map {tensor name: shard file name}, checked by type."""
    try:
        d = read_json(index, "safetensors index")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(d, dict) or "weight_map" not in d:
        raise CheckpointError(f"{index}: not a safetensors index (expected a JSON object with 'weight_map')")
    weight_map = d["weight_map"]
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: 'weight_map' must be an object {{tensor name: shard file}}, got "
                              f"{type(weight_map).__name__} {json.dumps(weight_map)[:60]}")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or shard != Path(shard).name or shard in (".", ".."):
            raise CheckpointError(f"{index}: 'weight_map' entry for tensor '{name}' must be a file name in the "
                                  f"checkpoint directory, got {json.dumps(shard)[:60]}")
    return weight_map


class Checkpoint:
    """A checkpoint directory: ``config``, ``names``, ``get(name)``, ``rows(name, ids)``, ``params(prefix)``.

    Tensors are converted to ``dtype`` on first use and kept (a load cache, not model state); ``rows``
    never caches, so a huge table is only ever touched row by row.
    """

    def __init__(self, directory, dtype=np.float32):
        self.dir = Path(directory)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise CheckpointError(f"dtype must be float32 or float64, got {self.dtype}")
        if not self.dir.is_dir():
            raise CheckpointError(f"{self.dir}: checkpoint directory not found")
        self.config = Gemma3nConfig.from_file(self.dir / "config.json")
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, str] = {}  # tensor name -> file name
        index = self.dir / "model.safetensors.index.json"
        single = self.dir / "model.safetensors"
        if index.exists():
            weight_map = read_index(index)
            for shard in sorted(set(weight_map.values())):
                if not (self.dir / shard).exists():
                    raise CheckpointError(f"{index} names shard '{shard}', which is not in {self.dir}")
                self.files[shard] = _open_file(self.dir / shard)
            for name, shard in weight_map.items():
                if name not in self.files[shard].header:
                    raise CheckpointError(f"{index} puts tensor '{name}' in '{shard}', which does not hold it")
                self.where[name] = shard
        elif single.exists():
            self.files["model.safetensors"] = _open_file(single)
            self.where = {n: "model.safetensors" for n in self.files["model.safetensors"].names}
        else:
            raise CheckpointError(f"{self.dir}: no model.safetensors and no model.safetensors.index.json")
        for name, shard in self.where.items():
            self.files[shard].storage(name)      # CheckpointError naming a tensor of a dtype minig3n cannot use
        self._cache: dict[str, np.ndarray] = {}
        # Text-only checkpoints (Gemma3nForCausalLM) keep the decoder at "model.", multimodal ones at
        # "model.language_model.".
        self.text_prefix = ("model.language_model." if "model.language_model.embed_tokens.weight" in self.where
                            else "model.")

    @property
    def names(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def _file(self, name: str) -> SafetensorsFile:
        if name not in self.where:
            raise CheckpointError(f"{self.dir}: tensor '{name}' is missing from the checkpoint")
        return self.files[self.where[name]]

    def shape(self, name: str) -> tuple:
        return self._file(name).info(name)[1]

    def stored_dtype(self, name: str) -> str:
        return self._file(name).info(name)[0]

    def get(self, name: str) -> np.ndarray:
        """The whole tensor as ``self.dtype`` (converted once, then cached)."""
        if name not in self._cache:
            f = self._file(name)
            self._cache[name] = to_float(f.raw(name), f.info(name)[0], self.dtype)
        return self._cache[name]

    def rows(self, name: str, ids) -> np.ndarray:
        """``table[ids]`` for a 2-D table, reading only those rows from disk. ids: any int array shape."""
        f = self._file(name)
        ids = np.asarray(ids)
        table = f.raw(name)                                          # [U, W] memory-mapped view
        picked = table[ids.reshape(-1)]                              # [n, W] copies n rows only
        return to_float(picked, f.info(name)[0], self.dtype).reshape(*ids.shape, table.shape[1])

    def params(self, prefix: str) -> "Params":
        """The tensors under ``prefix`` (e.g. ``model.language_model.layers.3.laurel``), keyed by the rest of
        their name (``linear_left.weight``), loaded when first read."""
        return Params(self, prefix.rstrip(".") + ".")

    def check_shapes(self, expected: Mapping[str, tuple]) -> None:
        """Raise CheckpointError naming the first tensor that is missing or has another shape."""
        for name, shape in expected.items():
            if name not in self.where:
                raise CheckpointError(f"{self.dir}: tensor '{name}' is missing (expected shape {list(shape)})")
            got = self.shape(name)
            if tuple(got) != tuple(shape):
                raise CheckpointError(f"{self.dir}: tensor '{name}' has shape {list(got)}, the config needs "
                                      f"{list(shape)}")


class Params(Mapping):
    """A read-only, lazily loaded view of one module's tensors: ``p["linear_left.weight"]``.

    Making one is free (the decoder makes several per layer and step): a lookup goes straight to the
    checkpoint's index; only iterating lists the names under the prefix."""

    def __init__(self, ckpt: Checkpoint, prefix: str):
        self.ckpt, self.prefix = ckpt, prefix

    def __getitem__(self, key: str) -> np.ndarray:
        return self.ckpt.get(self.prefix + key)  # CheckpointError naming the full tensor name if missing

    def _keys(self) -> list[str]:
        n = len(self.prefix)
        return [name[n:] for name in self.ckpt.where if name.startswith(self.prefix)]

    def __iter__(self):
        return iter(self._keys())

    def __len__(self):
        return len(self._keys())

    def __contains__(self, key) -> bool:
        return self.prefix + key in self.ckpt.where

    def sub(self, name: str) -> "Params":
        return Params(self.ckpt, self.prefix + name.rstrip(".") + ".")


def sub_params(p: Mapping, name: str) -> Mapping:
    """The weights of sub-module ``name`` of ``p``, keyed by the rest of their names:
    ``sub_params(p, "conformer.0")["norm.weight"]`` is ``p["conformer.0.norm.weight"]``. Works for a
    ``Params`` and for a plain dict of arrays (as the golden tests pass); either way nothing is copied or
    loaded, and a missing weight raises CheckpointError with its full name."""
    prefix = name.rstrip(".") + "."
    if isinstance(p, Params):
        return p.sub(prefix)
    if isinstance(p, _SubView):
        return _SubView(p.base, p.prefix + prefix)
    return _SubView(p, prefix)


class _SubView(Mapping):
    """``base[prefix + key]`` as ``view[key]``, over any Mapping of arrays."""

    def __init__(self, base: Mapping, prefix: str):
        self.base, self.prefix = base, prefix

    def __getitem__(self, key):
        try:
            return self.base[self.prefix + key]
        except KeyError:
            raise CheckpointError(f"weight '{self.prefix}{key}' is missing") from None

    def __contains__(self, key) -> bool:
        return (self.prefix + key) in self.base

    def __iter__(self):
        n = len(self.prefix)
        return (k[n:] for k in self.base if k.startswith(self.prefix))

    def __len__(self):
        return sum(1 for _ in self)


def text_weight_shapes(cfg, prefix: str) -> dict[str, tuple]:
    """Every tensor the text decoder reads, with the shape the config implies. ``prefix`` ends with '.'.

    KV-shared layers (index >= L - num_kv_shared_layers) carry k_proj/v_proj/k_norm in the official
    checkpoints, but the model never reads them, so they are not listed (and tolerated when present).
    """
    D, P, L = cfg.hidden_size, cfg.hidden_size_per_layer_input, cfg.num_hidden_layers
    N, G, E, R, K = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.laurel_rank, cfg.altup_num_inputs
    s = {
        prefix + "embed_tokens.weight": (cfg.vocab_size, D),
        prefix + "embed_tokens_per_layer.weight": (cfg.vocab_size_per_layer_input, L * P),
        prefix + "per_layer_model_projection.weight": (L * P, D),
        prefix + "per_layer_projection_norm.weight": (P,),
        prefix + "norm.weight": (D,),
    }
    for i in range(K - 1):
        s[f"{prefix}altup_projections.{i}.weight"] = (D, D)
        s[f"{prefix}altup_unembed_projections.{i}.weight"] = (D, D)
    for li in range(L):
        p, I = f"{prefix}layers.{li}.", cfg.intermediate_size[li]
        s.update({
            p + "self_attn.q_proj.weight": (N * E, D), p + "self_attn.o_proj.weight": (D, N * E),
            p + "self_attn.q_norm.weight": (E,),
            p + "mlp.gate_proj.weight": (I, D), p + "mlp.up_proj.weight": (I, D), p + "mlp.down_proj.weight": (D, I),
            p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
            p + "pre_feedforward_layernorm.weight": (D,), p + "post_feedforward_layernorm.weight": (D,),
            p + "altup.correct_output_scale": (D,), p + "altup.correction_coefs.weight": (K, K),
            p + "altup.prediction_coefs.weight": (K * K, K), p + "altup.modality_router.weight": (K, D),
            p + "altup.router_norm.weight": (D,),
            p + "laurel.linear_left.weight": (R, D), p + "laurel.linear_right.weight": (D, R),
            p + "laurel.post_laurel_norm.weight": (D,),
            p + "per_layer_input_gate.weight": (P, D), p + "per_layer_projection.weight": (D, P),
            p + "post_per_layer_input_norm.weight": (D,),
        })
        if li < cfg.first_kv_shared_layer:
            s.update({p + "self_attn.k_proj.weight": (G * E, D), p + "self_attn.v_proj.weight": (G * E, D),
                      p + "self_attn.k_norm.weight": (E,)})
    return s


def save_safetensors(path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write float tensors (F64/F32/F16; pass uint16 arrays under ``bf16=`` names via ``save_bf16``) to
    ``path``. Tensors are written in sorted name order so the same input always gives the same bytes. The
    file appears atomically (``atomic.atomic_output``: a unique temporary name next to it, renamed at the end,
    removed on any error, Ctrl-C or SIGTERM); OutputError for a read-only or full disk."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        arr = tensors[name]
        st = _NUMPY_TO_ST.get(arr.dtype) if not isinstance(arr, _BF16) else "BF16"
        if st is None:
            raise CheckpointError(f"cannot write tensor '{name}' of dtype {arr.dtype} (float16/32/64 or BF16 only)")
        data = np.ascontiguousarray(arr.bits if isinstance(arr, _BF16) else arr).astype(
            _STORAGE[st], copy=False).tobytes()
        header[name] = {"dtype": st, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # align the data section to 8 bytes, as the reference writer does
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for c in chunks:
                f.write(c)


class _BF16:
    """A float32 array marked to be stored as BF16 (rounded to nearest even) by ``save_safetensors``."""

    def __init__(self, x: np.ndarray):
        self.bits = float32_to_bf16_bits(x)
        self.shape, self.dtype = self.bits.shape, np.dtype("uint16")


def as_bf16(x: np.ndarray) -> _BF16:
    return _BF16(np.asarray(x, dtype=np.float32))


def load_safetensors(path, dtype=None) -> tuple[dict[str, np.ndarray], dict]:
    """Read a whole (small) safetensors file: ({name: array}, metadata). dtype None keeps stored floats,
    except BF16, which becomes float32."""
    f = SafetensorsFile(path)
    out = {}
    for name in f.names:
        st = f.info(name)[0]
        target = dtype or (np.float32 if st == "BF16" else _STORAGE[st])
        out[name] = to_float(f.raw(name), st, target)
    return out, f.metadata
