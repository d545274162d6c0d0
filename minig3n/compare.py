"""``minig3n compare A.safetensors B.safetensors``: find the first activation where two traces part.

The idea: a port that is wrong somewhere is usually right up to one module; comparing every traced
activation in forward order names that module. For each tensor both files hold, in the forward order stored
in A's metadata (``order``, a JSON list; else B's; else A's file order), it prints the shape, the largest
absolute difference, that difference relative to the largest magnitude in A's tensor, and the cosine
similarity. It names the first tensor whose relative error exceeds ``--rtol`` and exits 1 if any does, 0 if
none does (2 on bad input: a file that is not safetensors, or no tensor in common).

Error measure: ``max|a - b| / max|a|`` (as tests/golden_io.rel_err). A tensor whose shapes differ counts as
exceeding. Tensors found in only one file are listed, not compared.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from .errors import CheckpointError, InputError


def _read(path) -> tuple[dict, list | None]:
    """({name: float64 array}, the forward order stored in the metadata or None)."""
    from .safetensors_io import load_safetensors
    try:
        tensors, meta = load_safetensors(path, np.float64)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: not a readable safetensors trace ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it as a safetensors trace ({e.strerror or e})") from None
    try:
        order = [n for n in json.loads(meta["order"]) if n in tensors]
    except (KeyError, ValueError, TypeError):
        return tensors, None
    return tensors, order + [n for n in tensors if n not in order]


def compare_tensors(a: np.ndarray, b: np.ndarray) -> dict:
    """Shape, max abs error, relative error (to max|a|), cosine similarity of two arrays."""
    if a.shape != b.shape:
        return {"shape": f"{list(a.shape)} vs {list(b.shape)}", "max_abs": np.inf, "rel": np.inf, "cos": np.nan}
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    max_abs = float(np.max(np.abs(a64 - b64))) if a64.size else 0.0
    scale = float(np.max(np.abs(a64))) if a64.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    cos = float(a64 @ b64 / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    return {"shape": str(list(a.shape)), "max_abs": max_abs, "rel": rel, "cos": cos}


def compare_files(path_a, path_b, rtol: float = 1e-5, out=None) -> int:
    """Print the comparison table (to ``out``, default stdout); return the exit code (0 all within rtol, 1 some
    exceed)."""
    out = out or sys.stdout
    ta, order_a = _read(path_a)
    tb, order_b = _read(path_b)
    order = order_a or order_b or list(ta)
    common = [n for n in order if n in tb] + [n for n in ta if n in tb and n not in order]
    if not common:
        raise InputError(f"{path_a} and {path_b} have no tensor name in common")
    width = max(len(n) for n in common)
    print(f"{'tensor':<{width}}  {'shape':<18} {'max abs err':>12} {'rel err':>10} {'cosine':>12}", file=out)
    first = None
    for n in common:
        r = compare_tensors(ta[n], tb[n])
        bad = not (r["rel"] <= rtol)
        if bad and first is None:
            first = n
        print(f"{n:<{width}}  {r['shape']:<18} {r['max_abs']:12.3e} {r['rel']:10.3e} {r['cos']:12.9f}"
              f"{'  <-- exceeds' if bad else ''}", file=out)
    only_a, only_b = [n for n in ta if n not in tb], [n for n in tb if n not in ta]
    if only_a or only_b:
        print(f"not compared: {len(only_a)} only in {path_a} {only_a[:5]}, {len(only_b)} only in {path_b} "
              f"{only_b[:5]}", file=out)
    if first is None:
        print(f"all {len(common)} tensors within rtol {rtol:g}", file=out)
        return 0
    print(f"first tensor over rtol {rtol:g}: {first}", file=out)
    return 1


def add_compare_arguments(parser) -> None:
    parser.add_argument("a", help="first trace (.safetensors), e.g. the reference's")
    parser.add_argument("b", help="second trace (.safetensors)")
    parser.add_argument("--rtol", type=float, default=1e-5,
                        help="largest allowed max|a-b| / max|a| per tensor (default 1e-5: float32 vs float32; "
                             "use 1e-10 for float64 vs float64)")


def run_compare(args) -> int:
    return compare_files(args.a, args.b, args.rtol)
