"""Golden fixtures: small safetensors files under tests/goldens/, written by the reference tier and read
by the NumPy-only tests.

A fixture file holds tensors under prefixed names and a JSON ``meta`` entry in its metadata:

* ``in.<name>``       inputs (ids, hidden states, features, pixels)
* ``w.<hf name>``     weights, under their Hugging Face names relative to the module (``w.linear_left.weight``)
* ``out32.<name>``    the reference's outputs in float32 (as published, float32 islands and all)
* ``out64.<name>``    the reference's outputs in float64 with its float32 activation casts lifted
                      (``tests/reference/lift_*.py``; see ../shared/docs/gemma3n_numerics.md section 8)
* ``meta``            JSON: the config the reference was built with, seeds, the reference versions.

``load_golden(name)`` returns ``Golden`` with ``.inputs``, ``.weights``, ``.out32``, ``.out64``, ``.meta``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minig3n.checkpoint import load_safetensors, save_safetensors

GOLDENS = Path(__file__).parent / "goldens"


@dataclass
class Golden:
    inputs: dict
    weights: dict
    out32: dict
    out64: dict
    meta: dict


def _strip(d: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}


def load_golden(name: str) -> Golden:
    tensors, metadata = load_safetensors(GOLDENS / f"{name}.safetensors")
    return Golden(_strip(tensors, "in."), _strip(tensors, "w."), _strip(tensors, "out32."),
                  _strip(tensors, "out64."), json.loads(metadata.get("meta", "{}")))


def save_golden(name: str, inputs: dict, weights: dict, out32: dict, out64: dict, meta: dict) -> Path:
    """Write tests/goldens/<name>.safetensors deterministically (sorted names, sorted JSON keys)."""
    tensors = {}
    for prefix, group in (("in.", inputs), ("w.", weights), ("out32.", out32), ("out64.", out64)):
        for k, v in group.items():
            v = np.asarray(v)
            if v.dtype.kind in "iub":  # integer inputs (ids, masks) are stored as float64: exact below 2**53
                v = v.astype(np.float64)
            tensors[prefix + k] = np.ascontiguousarray(v)
    GOLDENS.mkdir(exist_ok=True)
    path = GOLDENS / f"{name}.safetensors"
    save_safetensors(path, tensors, {"meta": json.dumps(meta, sort_keys=True)})
    return path


def rel_err(got, want) -> float:
    """max |got - want| / max |want|: the error measure every numeric test here uses."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != expected {want.shape}"
    scale = np.max(np.abs(want))
    return float(np.max(np.abs(got - want)) / (scale if scale > 0 else 1.0))
