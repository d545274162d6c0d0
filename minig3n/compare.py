"""``minig3n compare A.safetensors B.safetensors``: find the module where two traces part, and the one that
*introduces* the largest divergence.

The idea: a port that is wrong somewhere is usually right up to one module; comparing every traced
activation in forward order names that module. But one harmless early difference (an embedding rounded to
BF16, a float32 constant) makes every later tensor differ too, so "the first tensor over the tolerance" stops
being the bug. So each row also carries the error of the module's *inputs* (the traced tensors it reads,
``inputs_of``) and the error the module adds on top of them (``added = rel - input_rel``): a module that
merely passes an earlier error along adds about nothing; the one with the bug adds a lot. The **culprit** is
the tensor over its tolerance with the largest ``added``.

For each tensor both files hold, in the forward order stored in A's metadata (``order``, a JSON list; else
B's; else A's file order), a row holds:

* ``name``, ``shape``; ``max_abs`` = max |a - b|; ``rel`` = max_abs / max |a| (as tests/golden_io.rel_err);
  ``cosine`` of the flattened tensors; ``worst_index``: the index of the largest |a - b| (e.g. ``[t, d]``: the
  token row that parts first);
* ``rtol`` (the tolerance that applies to it), ``exceeds`` (rel > rtol, a NaN/inf mismatch, or differing
  shapes);
* ``inputs`` (the traced inputs found in both files), ``input_rel`` (their largest rel), ``added``.

Tolerances: ``--preset float64|float32|bf16`` (below, ``PRESETS``; default float32), ``--rtol X`` (every
tensor), ``--tol PATTERN=X`` (repeatable, shell-style pattern on the name, last match wins; e.g.
``--tol 'logits=1e-3' --tol '*.self_attn=1e-4'``). Exit codes: 0 every tensor within its tolerance, 1 some
exceed, 2 unreadable input or bad arguments (not a safetensors file, no tensor in common, a negative
tolerance). ``--json FILE`` (``-`` = stdout) writes ``{"rows": [...], "culprit": NAME|null, "first":
NAME|null, "exit": 0|1, ...}``; non-finite numbers are written as null.

Python API: ``load_trace(path) -> (tensors, meta)`` (tensors in forward order, metadata JSON-decoded),
``compare(a, b, ...) -> rows`` (a, b: paths or {name: array}; ``minig3n.compare_traces``), ``culprit(rows)``,
``first_exceeding(rows)``;
``minig3n.trace.write_trace`` writes a trace (docs/PORTING.md).

Source: minig3n's own tool; the names are the reference's module paths (``decoder.py``'s docstring).
"""
from __future__ import annotations

import fnmatch
import json
import math
import re
import sys

import numpy as np

from .errors import CheckpointError, InputError
from .trace_graph import inputs_of

# Tolerances per tensor, relative to max|a| (see the module docstring). The default is the float32 preset.
PRESETS = {
    # float64 against float64 (minig3n vs the lifted reference: <= 1e-14 measured; 1e-10 leaves room for
    # another framework's summation order)
    "float64": {"*": 1e-10},
    # float32 against float32 or a float64 reference: the project's numerics budget (~1e-5 per module, ~1e-4
    # logits: the LM head sums over D with values up to the softcap)
    "float32": {"*": 1e-5, "lm_head": 1e-4, "logits": 1e-4},
    # a BF16 port against a float32/float64 reference. Written reason for the looser values: one BF16 rounding
    # is a relative error of up to 2**-9 = 2.0e-3 per element, and a decoder layer rounds its activations ~10
    # times (norms, projections, residual adds) on the way, so 3e-2 per module; the logits, a sum over D of
    # rounded products, get 6e-2.
    "bf16": {"*": 3e-2, "lm_head": 6e-2, "logits": 6e-2},
}


# Reading -----------------------------------------------------------------------------------------------------
def _decode_meta(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (ValueError, TypeError):
            out[k] = v
    return out


def load_trace(path, dtype=None) -> tuple[dict, dict]:
    """A trace file -> ({name: array} in forward order, metadata with JSON values decoded).

    The forward order is the metadata's ``order`` list (names it lacks follow in file order). dtype: None keeps
    the stored dtype (BF16 -> float32); e.g. np.float64 converts. Unreadable file -> CheckpointError naming it."""
    from .safetensors_io import load_safetensors
    try:
        tensors, meta = load_safetensors(path, dtype)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: not a readable safetensors trace ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it as a safetensors trace ({e.strerror or e})") from None
    meta = _decode_meta(meta)
    order = meta.get("order")
    if isinstance(order, list):
        names = [n for n in order if n in tensors]
        names += [n for n in tensors if n not in set(names)]
    else:
        names = list(tensors)
    return {n: tensors[n] for n in names}, meta


def _as_trace(x, label):
    """A path or a {name: array} mapping -> ({name: array}, has_forward_order)."""
    if isinstance(x, dict):
        return dict(x), True
    tensors, meta = load_trace(x, np.float64)
    return tensors, isinstance(meta.get("order"), list)


# Tolerances --------------------------------------------------------------------------------------------------
def tolerances(preset: str = "float32", rtol: float | None = None, tol=()) -> list[tuple[str, float]]:
    """[(pattern, rtol), ...], later entries winning: the preset, then ``rtol`` for every name, then ``tol``
    (``"PATTERN=X"`` strings or (pattern, x) pairs). Negative or non-numeric -> InputError."""
    if preset not in PRESETS:
        raise InputError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    rules = list(PRESETS[preset].items())
    if rtol is not None:
        rules = [("*", _check_tol(rtol, "--rtol"))]
    for item in tol:
        if isinstance(item, str):
            pattern, sep, value = item.rpartition("=")
            if not sep or not pattern:
                raise InputError(f"--tol {item!r}: expected PATTERN=RTOL, e.g. 'model.layers.*.mlp=1e-4'")
            try:
                value = float(value)
            except ValueError:
                raise InputError(f"--tol {item!r}: '{value}' is not a number") from None
        else:
            pattern, value = item
        rules.append((pattern, _check_tol(value, f"--tol {pattern}")))
    return rules


def _check_tol(x, what) -> float:
    x = float(x)
    if not (x >= 0):   # negative or NaN
        raise InputError(f"{what} {x:g}: a tolerance must be a number >= 0")
    return x


def tolerance_for(name: str, rules) -> float:
    base = re.sub(r"^step\d+\.", "", name)     # decode-step traces: step{n}.<name> takes <name>'s tolerance
    out = None
    for pattern, value in rules:
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(base, pattern):
            out = value
    return 1e-5 if out is None else out


# Comparing ---------------------------------------------------------------------------------------------------
def compare_tensors(a: np.ndarray, b: np.ndarray) -> dict:
    """Shape, max abs error, relative error (to max|a|), cosine similarity and the index of the largest error
    of two arrays. NaN or inf where the other holds a different value counts as an infinite error."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return {"shape": f"{list(a.shape)} vs {list(b.shape)}", "max_abs": np.inf, "rel": np.inf, "cos": np.nan,
                "worst_index": None, "row_err": np.inf}
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not a64.size:
        return {"shape": str(list(a.shape)), "max_abs": 0.0, "rel": 0.0, "cos": 1.0, "worst_index": None,
                "row_err": 0.0}
    same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))            # equal, inf == inf and NaN == NaN
    diff = np.where(same, 0.0, np.abs(a64 - b64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    worst = int(np.argmax(diff))
    max_abs = float(diff.flat[worst])
    finite_a = np.abs(a64[np.isfinite(a64)])
    scale = float(finite_a.max()) if finite_a.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    fa, fb = np.nan_to_num(a64.ravel()), np.nan_to_num(b64.ravel())
    na, nb = np.linalg.norm(fa), np.linalg.norm(fb)
    cos = float(fa @ fb / (na * nb)) if na > 0 and nb > 0 and np.isfinite(na * nb) else (1.0 if na == nb else 0.0)
    return {"shape": str(list(a.shape)), "max_abs": max_abs, "rel": rel, "cos": cos, "row_err": row_error(a64, b64),
            "worst_index": [int(i) for i in np.unravel_index(worst, a.shape)]}


def row_error(a, b) -> float:
    """max over rows (the last axis: one token's vector) of ||a - b|| / ||a||: the error measure of attribution.
    Unlike rel it does not change when a module rescales rows (an RMSNorm), so a module that only passes an
    error along keeps it about the same. Rows much smaller than the others would make tiny absolute errors look
    large, so a row's norm is floored at a quarter of the median row norm."""
    a, b = np.nan_to_num(np.atleast_1d(a)), np.nan_to_num(np.atleast_1d(b))
    num = np.sqrt(np.sum((a - b) ** 2, axis=-1)).ravel()
    den = np.sqrt(np.sum(a ** 2, axis=-1)).ravel()
    floor = ROW_FLOOR * float(np.median(den))
    den = np.maximum(den, floor)
    if not np.any(den > 0):
        return 0.0 if not np.any(num > 0) else np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num > 0, np.inf, 0.0))
    return float(np.max(r))


ROW_FLOOR = 0.25


def compare(a, b, *, preset: str = "float32", rtol: float | None = None, tol=()) -> list[dict]:
    """Compare two traces (paths or {name: array} dicts, forward order = A's, else B's) -> rows, one per tensor
    both hold, in forward order (keys: module docstring)."""
    ta, ord_a = _as_trace(a, "A")
    tb, ord_b = _as_trace(b, "B")
    rules = tolerances(preset, rtol, tol)
    order = list(ta) if ord_a or not ord_b else list(tb)
    common = [n for n in order if n in ta and n in tb] + [n for n in ta if n in tb and n not in set(order)]
    rows, by_name = [], {}
    for n in common:
        r = compare_tensors(ta[n], tb[n])
        row = {"name": n, "shape": list(np.shape(ta[n])), "shape_b": list(np.shape(tb[n])), "max_abs": r["max_abs"],
               "rel": r["rel"], "cosine": r["cos"], "worst_index": r["worst_index"], "rtol": tolerance_for(n, rules)}
        row["exceeds"] = not (row["rel"] <= row["rtol"])
        row["inputs"] = [i for i in inputs_of(n, common) if i in by_name and i != n]
        in_rel = max([by_name[i]["rel"] for i in row["inputs"]], default=0.0)
        row["input_rel"] = in_rel
        row["row_err"] = r["row_err"]
        in_err = max([by_name[i]["row_err"] for i in row["inputs"]], default=0.0)
        row["input_row_err"] = in_err
        row["added"] = (r["row_err"] - in_err) if not (math.isinf(r["row_err"]) and math.isinf(in_err)) else 0.0
        rows.append(row)
        by_name[n] = row
    return rows


compare_traces = compare      # the name exported by the package (``minig3n.compare`` is this module)


def first_exceeding(rows) -> str | None:
    return next((r["name"] for r in rows if r["exceeds"]), None)


def culprit(rows) -> str | None:
    """The tensor over its tolerance that adds the most error to its inputs' (the first of equals)."""
    best, best_added = None, -np.inf
    for r in rows:
        if r["exceeds"] and r["added"] > best_added:
            best, best_added = r["name"], r["added"]
    return best


def _jsonable(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def report(rows, path_a="A", path_b="B", only_a=(), only_b=()) -> dict:
    """The ``--json`` document for ``rows``."""
    bad = [r["name"] for r in rows if r["exceeds"]]
    return _jsonable({"a": str(path_a), "b": str(path_b), "rows": rows, "culprit": culprit(rows),
                      "first": first_exceeding(rows), "exceeding": len(bad), "compared": len(rows),
                      "only_a": list(only_a), "only_b": list(only_b), "exit": 1 if bad else 0})


def compare_files(path_a, path_b, rtol: float | None = None, out=None, *, preset: str = "float32", tol=(),
                  json_out=None) -> int:
    """Print the comparison table (to ``out``, default stdout), optionally write the JSON report; return the exit
    code (0 all within tolerance, 1 some exceed)."""
    out = out or sys.stdout
    tolerances(preset, rtol, tol)              # bad tolerances fail before any file is read
    ta, meta_a = load_trace(path_a, np.float64)
    tb, meta_b = load_trace(path_b, np.float64)
    if not isinstance(meta_a.get("order"), list) and isinstance(meta_b.get("order"), list):
        ta = {n: ta[n] for n in [*[m for m in tb if m in ta], *[m for m in ta if m not in tb]]}   # B's order
    rows = compare(ta, tb, preset=preset, rtol=rtol, tol=tol)
    if not rows:
        raise InputError(f"{path_a} and {path_b} have no tensor name in common")
    only_a, only_b = [n for n in ta if n not in tb], [n for n in tb if n not in ta]
    doc = report(rows, path_a, path_b, only_a, only_b)
    if json_out is not None:
        text = json.dumps(doc, indent=1)
        if str(json_out) == "-":
            print(text, file=out)
            return doc["exit"]
        from pathlib import Path
        Path(json_out).write_text(text + "\n")
    uniform = rtol is not None and not tol
    width = max(len(r["name"]) for r in rows)
    print(f"{'tensor':<{width}}  {'shape':<18} {'worst at':<14} {'input err':>10} {'max abs err':>12} "
          f"{'rel err':>10} {'cosine':>12}", file=out)
    for r in rows:
        shape = str(r["shape"]) if r["shape"] == r["shape_b"] else f"{r['shape']}vs{r['shape_b']}"
        where = "-" if r["worst_index"] is None else "[" + ",".join(map(str, r["worst_index"])) + "]"
        flag = ""
        if r["exceeds"]:
            flag = "  <-- exceeds" + ("" if uniform else f" {r['rtol']:g}")
            if r["name"] == doc["culprit"]:
                flag += f", culprit (adds {r['added']:.1e})"
        print(f"{r['name']:<{width}}  {shape:<18} {where:<14} {r['input_rel']:10.2e} {r['max_abs']:12.3e} "
              f"{r['rel']:10.3e} {r['cosine']:12.9f}{flag}", file=out)
    if only_a or only_b:
        print(f"not compared: {len(only_a)} only in {path_a} {only_a[:5]}, {len(only_b)} only in {path_b} "
              f"{only_b[:5]}", file=out)
    what = f"rtol {rtol:g}" if uniform else f"its tolerance (preset {preset}" + (", --tol" if tol else "") + \
        (f", --rtol {rtol:g}" if rtol is not None else "") + ")"
    if doc["first"] is None:
        print(f"all {len(rows)} tensors within {what}", file=out)
        return 0
    c = next(r for r in rows if r["name"] == doc["culprit"])
    print(f"culprit (adds the most error to its inputs'): {c['name']} (rel err {c['rel']:.2e}, its inputs "
          f"{c['input_rel']:.2e}, worst at {c['worst_index']})", file=out)
    print(f"first tensor over {what}: {doc['first']}", file=out)
    return 1


def add_compare_arguments(parser) -> None:
    parser.description = (
        "Compare two trace files (minig3n trace, or your port's, see docs/PORTING.md) tensor by tensor in forward "
        "order. Each row: the error of the module's traced inputs, max|a-b|, rel = max|a-b|/max|a|, cosine, and "
        "where the worst error is. The culprit is the tensor over its tolerance that adds the most error to its "
        "inputs' (so a bug stands out after a harmless earlier difference). Exit 0 within, 1 differ, 2 bad input.")
    parser.add_argument("a", help="first trace (.safetensors), e.g. the reference's")
    parser.add_argument("b", help="second trace (.safetensors)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="float32",
                        help="tolerances: float64 (1e-10), float32 (1e-5 per module, 1e-4 lm_head/logits; "
                             "default), bf16 (3e-2 per module, 6e-2 lm_head/logits: a BF16 port vs a float reference)")
    parser.add_argument("--rtol", type=float, default=None,
                        help="one largest allowed max|a-b| / max|a| for every tensor (replaces the preset; "
                             "e.g. 1e-10 for float64 vs float64)")
    parser.add_argument("--tol", action="append", default=[], metavar="PATTERN=RTOL",
                        help="tolerance for the names matching a shell-style pattern, e.g. 'logits=1e-3' or "
                             "'*.layers.*.mlp=1e-4' (repeatable; the last match wins)")
    parser.add_argument("--json", metavar="FILE", dest="json_out", default=None,
                        help="also write the report as JSON ({'rows': [...], 'culprit': ..., 'first': ...}); "
                             "'-' prints only the JSON to stdout")


def run_compare(args) -> int:
    return compare_files(args.a, args.b, args.rtol, preset=args.preset, tol=args.tol, json_out=args.json_out)
