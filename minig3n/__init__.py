"""minig3n: a NumPy-only reference implementation of Google's Gemma 3n (E2B/E4B).

One flat module per concept; see README.md for the map. Shape-comment legend: ``minig3n/config.py``.
Numerics notes: ``docs/NUMERICS.md``.

The public API, one loader convention (``from_pretrained(dir, dtype=...)``, as in the Hugging Face
ecosystem; ``dir`` is a checkpoint directory in Hugging Face layout, ``dtype`` float32 or float64)::

    import minig3n
    gen = minig3n.Generator.from_pretrained()             # default: the embedded nano-gemma3n
    prompt = minig3n.build_prompt(gen.tokenizer, "To be")  # or chat=..., messages=...
    text = "".join(piece for _, piece in gen.generate(prompt, max_new_tokens=20))

    minig3n.Gemma3nConfig.from_pretrained(dir)             # config.json, both layouts
    minig3n.Checkpoint.from_pretrained(dir, dtype)         # memory-mapped tensors under HF names
    minig3n.Tokenizer.from_pretrained(dir)                 # tokenizer.model
    model = minig3n.load_text_model(dir, dtype)            # shapes checked
    logits, cache = minig3n.forward(model, ids)            # ids [B, T] -> logits [B, T, V]
    minig3n.load_multimodal_model(dir, dtype)              # + vision and audio towers
    minig3n.generate(dir, "To be", max_new_tokens=20)      # one call; yields (token id, text piece)
    minig3n.SamplingParams(temperature, top_k, top_p, seed); minig3n.default_model_dir()

    minig3n.write_trace(path, {name: array}, ids=[...])    # a trace file (docs/PORTING.md)
    tensors, meta = minig3n.load_trace(path)               # names in forward order, metadata decoded
    rows = minig3n.compare_traces(a, b, preset="float32")  # per tensor: error, inputs' error, worst index

Names are imported on first use, so ``import minig3n`` (and ``minig3n --help``) stays fast.
"""
__version__ = "0.1.0"

import os as _os
import sys as _sys

# OpenBLAS's idle threads busy-wait for 2**28 cycles (about 0.1 s) after each call before they sleep. minig3n
# alternates OpenBLAS calls (attention) with its numba kernels (the BF16 linear layers), whose threads want the
# same cores: a 128-token E2B prefill took 4.0 s with the default, 3.0 s with OPENBLAS_THREAD_TIMEOUT=4 (16
# cycles), 2.9 s with OPENBLAS_NUM_THREADS=1 (tests/bench/README.md). OpenBLAS reads it when it loads, so it
# is set (unless already set) only if numpy is not imported yet; importing numpy first leaves it as it was.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the kernel at once.

    By default glibc returns every freed block of 128 KiB or more (raised up to 32 MiB as it goes) to the
    kernel (``munmap``, or trimming the heap's top past twice that), so NumPy's temporaries come back as
    fresh pages, faulted in and zeroed again on each use. A forward pass makes hundreds of them (a
    [128, 2048] float32 array is 1 MiB): on this project's 2-vCPU VMs ``x * 2`` on 1 MiB took 435 us
    against 44 us with the memory kept, ``ops.rms_norm`` 580 against 170 us, and a 128-token E2B prefill
    0.82-0.86 against 0.79-0.80 s (four pairs of processes; tests/bench/README.md). Blocks up to 64 MiB then come from the heap
    (``M_MMAP_THRESHOLD``) and up to 1 GiB of free heap is kept (``M_TRIM_THRESHOLD``): the peak memory is
    the same, the memory after it is not given back. Done on import, once; only where the C library is
    glibc and neither ``MALLOC_MMAP_THRESHOLD_`` nor ``MALLOC_TRIM_THRESHOLD_`` is set (they mean someone
    chose); ``MINIG3N_MALLOC=default`` leaves malloc alone. Returns whether it applied the settings."""
    if _os.environ.get("MINIG3N_MALLOC", "").strip().lower() == "default" or not _sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in _os.environ or "MALLOC_TRIM_THRESHOLD_" in _os.environ:
        return False
    try:
        if not _os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3                   # glibc's malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, 64 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


MALLOC_TUNED = _keep_freed_memory()

# public name -> module that defines it
_API = {
    "Gemma3nConfig": "config", "Checkpoint": "checkpoint", "Tokenizer": "tokenizer",
    "Generator": "generate", "generate": "generate", "build_prompt": "generate", "SamplingParams": "sampling",
    "load_text_model": "decoder", "forward": "decoder", "load_multimodal_model": "multimodal",
    "default_model_dir": "default_model", "Minig3nError": "errors",
    "write_trace": "trace", "load_trace": "compare", "compare_traces": "compare",
}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'minig3n' has no attribute {name!r}")
