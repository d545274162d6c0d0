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
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import accel
from .bf16 import BF16Weight
from .config import Gemma3nConfig
from .errors import CheckpointError

# safetensors dtype name -> (numpy storage dtype, bytes per element)
_STORAGE = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
BF16_ENV = "MINIG3N_BF16"   # "widen": widen every BF16 tensor to float32 on first use (the old behaviour)
_NUMPY_TO_ST = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16"}


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 BF16 bit patterns -> float32, exactly (a BF16 number is the top 16 bits of a float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 BF16 bit patterns, rounding to nearest even (as torch does). For writing tests."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


class SafetensorsFile:
    """One memory-mapped .safetensors file: ``names``, ``info(name)``, ``raw(name)`` (a view, no copy)."""

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
                header_bytes = f.read(n)
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        try:
            header = json.loads(header_bytes)
            assert isinstance(header, dict)
        except (ValueError, AssertionError):
            raise CheckpointError(f"{self.path}: corrupt header (not a JSON object; not a safetensors file?)") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.header = header
        for name, info in header.items():
            try:
                dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: corrupt header entry for tensor '{name}'") from None
            if dtype not in _STORAGE:
                raise CheckpointError(f"{self.path}: tensor '{name}' has dtype {dtype}; minig3n reads "
                                      f"{', '.join(_STORAGE)} only")
            want = int(np.prod(shape, dtype=np.int64)) * _STORAGE[dtype].itemsize
            if end - begin != want:
                raise CheckpointError(f"{self.path}: corrupt header: tensor '{name}' {dtype}{list(shape)} needs "
                                      f"{want} bytes, its byte range holds {end - begin}")
            if self.data_start + end > size:
                raise CheckpointError(f"{self.path}: truncated file: tensor '{name}' ends at byte "
                                      f"{self.data_start + end}, the file has {size}")
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if size > 0 else None

    @property
    def names(self) -> list[str]:
        return list(self.header)

    def info(self, name: str) -> tuple[str, tuple]:
        h = self.header[name]
        return h["dtype"], tuple(h["shape"])

    def raw(self, name: str) -> np.ndarray:
        """The stored values as a read-only view into the memory map (uint16 bit patterns for BF16)."""
        h = self.header[name]
        begin, end = h["data_offsets"]
        storage = _STORAGE[h["dtype"]]
        flat = self._map[self.data_start + begin:self.data_start + end].view(storage)
        return flat.reshape(h["shape"])


def to_float(raw: np.ndarray, st_dtype: str, dtype) -> np.ndarray:
    """Stored values -> a fresh array of float ``dtype`` (every conversion is exact: widening only)."""
    if st_dtype == "BF16":
        return bf16_bits_to_float32(np.asarray(raw)).astype(dtype, copy=False)
    return np.array(raw, dtype=dtype)


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
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise CheckpointError(f"{index}: not a safetensors index (expected a JSON object with "
                                      "'weight_map')") from None
            for shard in sorted(set(weight_map.values())):
                if not (self.dir / shard).exists():
                    raise CheckpointError(f"{index} names shard '{shard}', which is not in {self.dir}")
                self.files[shard] = SafetensorsFile(self.dir / shard)
            for name, shard in weight_map.items():
                if name not in self.files[shard].header:
                    raise CheckpointError(f"{index} puts tensor '{name}' in '{shard}', which does not hold it")
                self.where[name] = shard
        elif single.exists():
            self.files["model.safetensors"] = SafetensorsFile(single)
            self.where = {n: "model.safetensors" for n in self.files["model.safetensors"].names}
        else:
            raise CheckpointError(f"{self.dir}: no model.safetensors and no model.safetensors.index.json")
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
        """The whole tensor as ``self.dtype`` (converted once, then cached). In float32 mode a 2-D BF16
        matrix of the text decoder comes back as a ``bf16.BF16Weight`` instead (see ``keeps_bf16``)."""
        if name not in self._cache:
            f = self._file(name)
            if self.keeps_bf16(name):
                self._cache[name] = BF16Weight(f.raw(name))                   # a view: nothing widened
            else:
                self._cache[name] = to_float(f.raw(name), f.info(name)[0], self.dtype)
        return self._cache[name]

    def keeps_bf16(self, name: str) -> bool:
        """True for the tensors handed out as BF16 bits: float32 mode, stored BF16, 2-D, under the text
        decoder's prefix (its linear weights and the tied embedding, multiplied by ``ops.linear`` straight
        from the memory map), numba kernels available (``accel.mode()``). ``MINIG3N_BF16=widen`` turns it
        off (every tensor widened once and cached, as before); float64 mode and the NumPy-only mode always
        widen."""
        if self.dtype != np.float32 or os.environ.get(BF16_ENV, "").strip().lower() == "widen":
            return False
        if accel.mode() != "numba":   # NumPy only: widening per block made a decode GEMV 2-3x slower than
            return False              # a cached float32 copy (tests/bench/README.md); keep the cache there
        dtype, shape = self._file(name).info(name)
        return dtype == "BF16" and len(shape) == 2 and name.startswith(self.text_prefix)

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
    file appears atomically (written to a temporary name, then renamed)."""
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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


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
