"""Validating a safetensors header exactly as the ``safetensors`` library does, with NumPy-free Python.

The idea: the JSON header is untrusted input that decides which bytes become weights. ``parse_header`` accepts
a header if and only if safetensors 0.8 does (``read_metadata`` + ``Metadata::validate``; a differential fuzz,
``tests/fuzz_safetensors.py``, checks the two agree): every tensor entry is ``{"dtype", "shape",
"data_offsets"}`` (or the same three as a list), dtype one of the format's names, shape and offsets unsigned
64-bit integers (not floats, not negative, not ``-0``), each byte count equal to dtype size x element count,
and the ranges, sorted, tiling the data section from byte 0 with no gap and no overlap; ``__metadata__`` holds
strings only; the JSON has no NaN / Infinity tokens, no number beyond float64, no unpaired surrogate escape,
at most 127 levels of nesting (found by a linear scan, so a 1000-deep header is an error, not a
RecursionError). One rule is stricter than the library: a tensor name listed twice is refused (the library
keeps the last entry silently, so the same bytes could be read two ways).

Source: safetensors 0.8 (``safetensors/src/tensor.rs``) behaviour, probed case by case through its Python API.
Left out: nothing of validity; what minig3n computes with is decided later (``SafetensorsFile.storage``).
"""
from __future__ import annotations

import json

from .errors import CheckpointError

# safetensors dtype name -> bits per element: every dtype the format defines (safetensors 0.8), so that what
# is a valid file is decided exactly as the safetensors library decides it. minig3n computes with the four
# float dtypes of STORAGE; a file holding others opens, and reading such a tensor raises CheckpointError.
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
