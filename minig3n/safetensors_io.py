"""The safetensors format, read and written with NumPy only.

The idea: a safetensors file is an 8-byte little-endian header length, a JSON header that gives each
tensor's dtype, shape and byte range (``{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}}``,
plus an optional ``__metadata__`` of strings), then the raw bytes. ``SafetensorsFile`` memory-maps a file and
hands out views of those byte ranges (``raw``) or reads row blocks from disk (``read_rows``); ``to_float``
converts stored values to the float dtype a caller asks for. BF16 has no NumPy dtype: its 16 bits are the top
half of a float32, so widening is a shift (exact, bit-identical to ``torch.bfloat16 -> float32``).
``write_safetensors`` is the one writer (tensors streamed chunk by chunk); ``save_safetensors`` and
``load_safetensors`` are its whole-file conveniences for small files (goldens, traces, test checkpoints).

Opening a file validates its header fully, as the ``safetensors`` library does (``safetensors_header``: types,
u64 shapes and offsets, byte ranges that tile the data section exactly, a 100 MB header cap, no NaN tokens, at
most 127 levels of nesting); ``tests/fuzz_safetensors.py`` checks the two agree on what is a valid file. One
rule is stricter: a tensor name listed twice is refused (the library keeps the last entry silently).

Source: the safetensors format (https://github.com/huggingface/safetensors, README "Format"); the rules of
validity are those of safetensors 0.8 (``Metadata::validate``, ``read_metadata``), checked by differential fuzz.
Left out: computing with integer, bool, fp8 and complex tensors (a file holding them opens; reading one raises
CheckpointError naming it; Gemma 3n checkpoints hold only floats).
"""
from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .atomic import atomic_output
from .safetensors_header import MAX_HEADER_BYTES, parse_header
from .errors import CheckpointError

# safetensors dtype name -> numpy storage dtype (BF16 is kept as its uint16 bit patterns)
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)   # Linux's value; newer Pythons name it
STORAGE = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
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
    """One memory-mapped .safetensors file: ``names``, ``info(name)``, ``raw(name)`` (a view, no copy),
    ``read_rows(name, start, stop)`` (a fresh array read from the file), ``itemsize(name)``.

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
        self._mmap = None                                                     # the file's read-only memory map
        if size > 0:
            with open(self.path, "rb") as fh:
                self._mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._map = np.frombuffer(self._mmap, dtype=np.uint8) if size > 0 else None  # [size] read-only view

    @property
    def names(self) -> list[str]:
        return list(self.header)

    def info(self, name: str) -> tuple[str, tuple]:
        h = self.header[name]
        return h["dtype"], tuple(h["shape"])

    def storage(self, name: str) -> np.dtype:
        """The NumPy storage dtype of a tensor (uint16 for BF16); CheckpointError for the dtypes minig3n
        does not compute with (integers, bool, fp8, complex: valid in a file, not in a Gemma 3n checkpoint)."""
        dtype = self.header[name]["dtype"]
        if dtype not in STORAGE:
            raise CheckpointError(f"{self.path}: tensor '{name}' has dtype {dtype}; minig3n reads "
                                  f"{', '.join(STORAGE)} only")
        return STORAGE[dtype]

    def itemsize(self, name: str) -> int:
        """Bytes per stored element of tensor ``name`` (2 for BF16/F16, 4 for F32, 8 for F64)."""
        return self.storage(name).itemsize

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (first axis) of a stored tensor in its stored dtype, read from the file rather
        than the memory map, so pages already read do not stay resident: copying a huge tensor block by block
        keeps memory at about one block."""
        dtype, shape = self.info(name)
        storage = self.storage(name)
        row = int(np.prod(shape[1:], dtype=np.int64))
        begin = self.header[name]["data_offsets"][0]
        data = np.fromfile(self.path, dtype=storage, count=(stop - start) * row,
                           offset=self.data_start + begin + start * row * storage.itemsize)  # [n * W] stored
        return data.reshape((stop - start,) + tuple(shape[1:]))                              # [n, W...]

    def populate(self, offset: int, length: int) -> bool:
        """Read bytes ``offset:offset+length`` of the file into the page cache *and* into this memory map's
        page tables (``madvise(MADV_POPULATE_READ)``, Linux 5.14 and later), so that reading them through
        ``raw`` later takes no page fault. False where the system does not offer it (then nothing happened)."""
        if self._mmap is None or not hasattr(self._mmap, "madvise"):
            return False
        start = offset - offset % mmap.PAGESIZE
        try:
            self._mmap.madvise(MADV_POPULATE_READ, start, offset + length - start)
        except OSError:                                 # EINVAL on older kernels
            return False
        return True

    def raw(self, name: str) -> np.ndarray:
        """The stored values as a read-only view into the memory map (uint16 bit patterns for BF16)."""
        h = self.header[name]
        storage = self.storage(name)
        begin, end = h["data_offsets"]
        if begin == end:                                # zero elements (or a file of zero data bytes)
            return np.zeros(h["shape"], dtype=storage)
        flat = self._map[self.data_start + begin:self.data_start + end].view(storage)
        return flat.reshape(h["shape"])


def to_float(raw: np.ndarray, st_dtype: str, dtype) -> np.ndarray:
    """Stored values -> a fresh array of float ``dtype`` (every conversion is exact: widening only)."""
    if st_dtype == "BF16":
        return bf16_bits_to_float32(np.asarray(raw)).astype(dtype, copy=False)
    return np.array(raw, dtype=dtype)


def write_safetensors(path, entries, metadata: Mapping[str, str] | None = None) -> int:
    """The one safetensors writer. ``entries``: ``(name, st_dtype, shape, chunks)`` with ``chunks`` an
    iterable of arrays whose bytes, in order, are the tensor's stored values (so a large tensor can be
    streamed block by block). Tensors are written in sorted name order, so the same input always gives the
    same bytes; the data section is 8-byte aligned as the reference writer does. The file appears
    atomically (``atomic.atomic_output``: a unique temporary name next to it, renamed at the end, removed on any
    error, Ctrl-C or SIGTERM; OutputError for a read-only or full disk). Returns the bytes of tensor data
    written."""
    entries = sorted(entries, key=lambda e: e[0])
    header, offset = {}, 0
    for name, st, shape, _ in entries:
        n = int(np.prod(shape, dtype=np.int64)) * STORAGE[st].itemsize
        header[name] = {"dtype": st, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # align the data section to 8 bytes
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for name, _, _, chunks in entries:
                written = 0
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk)
                    f.write(chunk.data)
                    written += chunk.nbytes
                begin, end = header[name]["data_offsets"]
                assert written == end - begin, f"{name}: wrote {written} bytes, planned {end - begin}"
    return offset


def save_safetensors(path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write float tensors (F64/F32/F16, or BF16 for arrays wrapped by ``as_bf16``) to ``path`` with
    ``write_safetensors`` (sorted names, atomic)."""
    entries = []
    for name, arr in tensors.items():
        st = _NUMPY_TO_ST.get(arr.dtype) if not isinstance(arr, _BF16) else "BF16"
        if st is None:
            raise CheckpointError(f"cannot write tensor '{name}' of dtype {arr.dtype} (float16/32/64 or BF16 only)")
        data = np.ascontiguousarray(arr.bits if isinstance(arr, _BF16) else arr).astype(STORAGE[st], copy=False)
        entries.append((name, st, arr.shape, [data]))
    write_safetensors(path, entries, metadata)


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
        target = dtype or (np.float32 if st == "BF16" else STORAGE[st])
        out[name] = to_float(f.raw(name), st, target)
    return out, f.metadata
