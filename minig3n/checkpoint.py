"""Reading a Hugging Face checkpoint directory, unmodified, with NumPy only.

The idea: a directory holds either one ``model.safetensors`` or shards listed in
``model.safetensors.index.json`` (``{"weight_map": {tensor name: shard file}}``), next to ``config.json``.
``Checkpoint`` opens every file memory-mapped (``safetensors_io.SafetensorsFile``) and hands out tensors by
their HF name, converted to the float dtype asked for (float32 by default, float64 for verification) only
when a tensor is first used. ``params(prefix)`` is a module's weights as a prefix view (``params.ParamView``),
which is what the pure modules take.

The per-layer-embedding table (``embed_tokens_per_layer``, 262144 x 7680 = 2 B parameters in E2B) is never
made resident: ``Checkpoint.rows`` gathers only the rows of the ids at hand from the memory map.

Tensor names are the HF names (``model.language_model.layers.3.altup.prediction_coefs.weight``); text-only
checkpoints (``Gemma3nForCausalLM``) use ``model.layers...`` instead of ``model.language_model.layers...``.
``check_shapes`` compares them with the shapes the config implies (``weight_shapes``).

Source: the Hugging Face checkpoint layout (transformers ``save_pretrained`` with safetensors shards).
Left out: writing (``safetensors_io.write_safetensors``), integer and fp8 tensors (Gemma 3n checkpoints hold
only floats), and the ``lm_head.weight`` of untied models (Gemma 3n ties it).
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import accel
from .bf16 import BF16Weight
from .config import Gemma3nConfig, read_json
from .errors import CheckpointError, ConfigError
from .params import ParamView
from .safetensors_io import (SafetensorsFile, as_bf16, bf16_bits_to_float32, float32_to_bf16_bits, load_safetensors,
                             save_safetensors, to_float)
from .weight_shapes import text_weight_shapes

BF16_ENV = "MINIG3N_BF16"   # "widen": widen every BF16 tensor to float32 on first use (the old behaviour)
PREFETCH_CHUNK = 4 << 20    # bytes per read of the background prefetch (Checkpoint.prefetch)

# Besides Checkpoint, the file-level helpers and the text shape table are importable from here, where the
# walkthrough and the tests have always found them (they live in safetensors_io and weight_shapes).
__all__ = ["Checkpoint", "SafetensorsFile", "as_bf16", "bf16_bits_to_float32", "float32_to_bf16_bits",
           "load_safetensors", "save_safetensors", "text_weight_shapes", "to_float"]


class Prefetch:
    """The background reader of ``Checkpoint.prefetch``: a daemon thread reads each ``(name, file, offset,
    length)`` range in order, ``PREFETCH_CHUNK`` bytes at a time, and ``wait_for(name)`` blocks until that
    range has been read. Reading is ``SafetensorsFile.populate`` (``madvise(MADV_POPULATE_READ)`` on the
    memory map the kernels read: into the page cache and the page tables, nothing copied); where the system
    lacks it, ``os.preadv`` into one reusable scratch buffer (the page cache keeps the bytes). A read error
    ends the reading and releases every waiter (the memory map then reads what it needs itself).
    ``disk`` (a lock) is held for each chunk; ``Checkpoint.rows`` takes it too, so the embedding rows the
    first forward pass looks up (scattered 4-15 KB reads of the token and per-layer tables) wait for at most
    one chunk instead of queueing behind every request the reader has in flight.
    Left out: a bound on how far ahead of the forward pass it reads (it reads every matrix once, in order).

    Measured (E2B shapes: 4.8 GB of BF16 matrices, this project's 2-core VM, the pages dropped first): the
    reader alone took 3.7 s wall and 0.6 s of system CPU with ``MADV_POPULATE_READ``, 6.6 s and 4.8 s with
    16 MiB ``preadv`` reads, whose CPU time slowed the two compute threads beside it. The first 128-token
    prefill: tests/bench/README.md."""

    def __init__(self, ranges, disk: threading.Lock):
        self.disk = disk
        self.index = {name: i for i, (name, *_) in enumerate(ranges)}
        self.done = 0                                  # ranges read so far (all of them after an error)
        self.error: OSError | None = None
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, args=(ranges,), name="minig3n-prefetch", daemon=True)
        self.thread.start()

    def _run(self, ranges):
        fds: dict = {}
        buf = None
        try:
            for i, (_, file, offset, length) in enumerate(ranges):
                end = offset + length
                while offset < end:
                    n = min(PREFETCH_CHUNK, end - offset)
                    with self.disk:
                        populated = file.populate(offset, n)
                    if not populated:
                        if file.path not in fds:
                            fds[file.path] = os.open(file.path, os.O_RDONLY)
                        buf = buf if buf is not None else memoryview(bytearray(PREFETCH_CHUNK))
                        n = os.preadv(fds[file.path], [buf[:n]], offset)
                        if n <= 0:
                            break                      # a short file: mapping the tensor reports it
                    offset += n
                with self._cond:
                    self.done = i + 1
                    self._cond.notify_all()
        except OSError as e:
            self.error = e
        finally:
            for fd in fds.values():
                os.close(fd)
            with self._cond:
                self.done = len(ranges)
                self._cond.notify_all()

    def wait_for(self, name: str) -> None:
        """Return once ``name``'s bytes have been read (at once for a name not in the list)."""
        i = self.index.get(name)
        if i is not None:
            with self._cond:
                self._cond.wait_for(lambda: self.done > i)

    def join(self, timeout=None) -> None:
        self.thread.join(timeout)


def _read_ahead_rows(f: SafetensorsFile, name: str, ids: np.ndarray) -> None:
    """Ask the OS for the rows ``ids`` of a table all at once (``posix_fadvise(WILLNEED)`` per row) before
    they are read one page fault at a time: the reads of a prompt's scattered rows then overlap (128 rows of
    the E2B per-layer table, cold: 0.8 s read one after the other)."""
    if ids.size < 2 or not hasattr(os, "posix_fadvise"):
        return
    row_bytes = f.itemsize(name) * int(np.prod(f.info(name)[1][1:]))
    start = f.data_start + f.header[name]["data_offsets"][0]
    fd = os.open(f.path, os.O_RDONLY)
    try:
        for i in np.unique(ids):
            os.posix_fadvise(fd, start + int(i) * row_bytes, row_bytes, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


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

    @classmethod
    def from_pretrained(cls, directory, dtype=np.float32) -> "Checkpoint":
        """Open a checkpoint directory (the same as ``Checkpoint(directory, dtype)``)."""
        return cls(directory, dtype)

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
        self.prefetcher = None                   # the background reader of ``prefetch``, once started
        self.disk = threading.Lock()             # held by the reader per chunk and by ``rows`` (see Prefetch)
        # Text-only checkpoints (Gemma3nForCausalLM) keep the decoder at "model.", multimodal ones at
        # "model.language_model.".
        self.text_prefix = ("model.language_model." if "model.language_model.embed_tokens.weight" in self.where
                            else "model.")

    @property
    def names(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def file_of(self, name: str) -> SafetensorsFile:
        """The open file that holds tensor ``name`` (for ``read_rows``, ``itemsize``)."""
        if name not in self.where:
            raise CheckpointError(f"{self.dir}: tensor '{name}' is missing from the checkpoint")
        return self.files[self.where[name]]

    def shape(self, name: str) -> tuple:
        return self.file_of(name).info(name)[1]

    def stored_dtype(self, name: str) -> str:
        return self.file_of(name).info(name)[0]

    def get(self, name: str) -> np.ndarray:
        """The whole tensor as ``self.dtype`` (converted once, then cached). In float32 mode a 2-D BF16
        matrix of the text decoder comes back as a ``bf16.BF16Weight`` instead (see ``keeps_bf16``)."""
        if name not in self._cache:
            f = self.file_of(name)
            if self.keeps_bf16(name):
                if self.prefetcher is not None:
                    self.prefetcher.wait_for(name)                            # its bytes are in the page cache
                # a view, nothing widened; setdefault: one object even when two threads ask at once
                # (bf16.prepare_columns_behind keeps its column copy with it)
                return self._cache.setdefault(name, BF16Weight(f.raw(name)))
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
        dtype, shape = self.file_of(name).info(name)
        return dtype == "BF16" and len(shape) == 2 and name.startswith(self.text_prefix)

    def prefetch(self, names):
        """Read the bytes of ``names`` into the page cache in the background, in the order given (the order the
        first forward pass reads them), and make ``get`` of one of them wait until it has been read. Returns
        the reader (a ``Prefetch``, also kept as ``self.prefetcher``) at once. Used for the BF16 matrices read
        straight from the memory map, so that the first forward pass never reads the disk itself: its page
        faults would come 4 KiB at a time (with the kernel's read-ahead) and compete with the reader's large
        requests for the same disk. See ``Prefetch`` for what was measured."""
        ranges = []
        for name in names:
            f = self.file_of(name)
            begin, end = f.header[name]["data_offsets"]
            ranges.append((name, f, f.data_start + begin, end - begin))
        if not ranges:
            return None
        self.prefetcher = Prefetch(ranges, self.disk)
        return self.prefetcher

    def rows(self, name: str, ids) -> np.ndarray:
        """``table[ids]`` for a 2-D table, reading only those rows from disk. ids: any int array shape."""
        f = self.file_of(name)
        ids = np.asarray(ids)
        table = f.raw(name)                                          # [U, W] memory-mapped view
        with self.disk:                                              # between two chunks of the prefetch
            _read_ahead_rows(f, name, ids)
            picked = table[ids.reshape(-1)]                          # [n, W] copies n rows only
        return to_float(picked, f.info(name)[0], self.dtype).reshape(*ids.shape, table.shape[1])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.get(name)

    def __iter__(self):
        return iter(self.where)

    def params(self, prefix: str = "") -> ParamView:
        """The tensors under ``prefix`` (e.g. ``model.language_model.layers.3.laurel``), keyed by the rest of
        their name (``linear_left.weight``), loaded when first read."""
        return ParamView(self, prefix.rstrip(".") + "." if prefix else "")

    def check_shapes(self, expected: Mapping[str, tuple]) -> None:
        """Raise CheckpointError naming the first tensor that is missing or has another shape."""
        for name, shape in expected.items():
            if name not in self.where:
                raise CheckpointError(f"{self.dir}: tensor '{name}' is missing (expected shape {list(shape)})")
            got = self.shape(name)
            if tuple(got) != tuple(shape):
                raise CheckpointError(f"{self.dir}: tensor '{name}' has shape {list(got)}, the config needs "
                                      f"{list(shape)}")
