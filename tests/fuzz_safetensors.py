"""Differential fuzzing of minig3n's safetensors reader against the ``safetensors`` library (the oracle).

Each case is a file built from a random valid one, then (usually) damaged in one or a few ways that hit a
rule of the format: wrong field types, negative / float / huge / nested shapes and offsets, overlapping,
gapped or out-of-range byte ranges, unknown dtypes, duplicate keys, NaN tokens, deep nesting, lone
surrogates, bad UTF-8, header lengths past the end or the 100 MB cap, trailing or missing data bytes,
random byte flips. Both readers open it:

* **agree**: both accept (then every tensor the oracle can hand to NumPy must be byte-identical in both),
  or both reject (minig3n with a ``CheckpointError``);
* **disagree**: one accepts what the other rejects;
* **stricter by design**: the library accepts a header that lists one tensor name twice (keeping the last
  entry); minig3n refuses it (``... is listed more than once``). Counted apart, not as a disagreement;
* **foreign exception**: minig3n raised anything but ``CheckpointError`` (a crash, not an error message).

    python -m tests.fuzz_safetensors --cases 10000 [--seed 0] [--show 5]

prints the counts and exits 1 if any case disagrees or raised a foreign exception.
``tests/test_safetensors_fuzz.py`` runs a few hundred cases of the same generator in the normal test run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
import tempfile
from collections import Counter

import numpy as np

from minig3n.safetensors_header import _BITS
from minig3n.safetensors_io import STORAGE as _STORAGE, SafetensorsFile
from minig3n.errors import CheckpointError

DTYPES = list(_BITS)
FLOATS = ["F64", "F32", "F16", "BF16"]


# valid files ----------------------------------------------------------------------------------------------
def random_valid(rng: random.Random) -> tuple[dict, bytes]:
    """A valid header (as a dict, tensor order random) and its data section."""
    header, offset = {}, 0
    names = rng.sample(["a", "b", "w.0", "layers.1.x", "", "é", "__x", "norm.weight"], rng.randint(0, 4))
    order = names[:]
    rng.shuffle(order)                    # name order in the JSON differs from the byte order
    for name in names:
        dtype = rng.choice(FLOATS * 3 + DTYPES)
        shape = [rng.choice([0, 1, 2, 3, 4, 8]) for _ in range(rng.randint(0, 3))]
        n = int(np.prod(shape, dtype=np.int64)) * _BITS[dtype]
        if n % 8:                          # sub-byte dtypes need whole bytes
            shape = shape + [2] if _BITS[dtype] == 4 else shape + [4]
            n = int(np.prod(shape, dtype=np.int64)) * _BITS[dtype]
        size = n // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header = {k: header[k] for k in order}
    if rng.random() < 0.3:
        header["__metadata__"] = {"format": "np", "k": str(rng.randint(0, 9))}
    data = bytes(rng.getrandbits(8) for _ in range(offset))
    return header, data


def encode(header, data: bytes, pad: int = 0, n_override=None, text: bytes | None = None) -> bytes:
    hb = text if text is not None else json.dumps(header, ensure_ascii=False).encode()
    hb += b" " * pad
    n = len(hb) if n_override is None else n_override
    return struct.pack("<Q", n) + hb + data


# damage ---------------------------------------------------------------------------------------------------
BAD_INTS = [-1, -2, 1.0, 4.0, "4", None, True, [1], {"x": 1}, 10 ** 30, 2 ** 64, 2 ** 64 - 1, 2 ** 63, 1e400]


def _tensor_names(h):
    return [k for k in h if k != "__metadata__"]


def damage_header(rng: random.Random, h: dict, data: bytes) -> tuple[dict, bytes, bytes | None]:
    """One structural change; returns (header, data, raw header text or None)."""
    names = _tensor_names(h)
    kind = rng.randrange(24)
    t = h[rng.choice(names)] if names else None
    if t is None and kind < 12:
        kind = 12 + kind
    if kind == 0:
        t["shape"] = rng.choice([rng.choice(BAD_INTS), [rng.choice(BAD_INTS)], t["shape"] + [rng.choice(BAD_INTS)],
                                 [-2, -2], [4.0], 5, [[1]], [2 ** 40, 2 ** 40], [2 ** 62], [0, 2 ** 40, 2 ** 40]])
    elif kind == 1:
        i = rng.randrange(2)
        t["data_offsets"][i] = rng.choice(BAD_INTS + [t["data_offsets"][i] + rng.choice([-8, -1, 1, 8])])
    elif kind == 2:
        t["data_offsets"] = rng.choice([t["data_offsets"][::-1], t["data_offsets"] + [0], t["data_offsets"][:1],
                                        [0, 0], "0,4", None, {"0": 0, "1": 4}])
    elif kind == 3:
        t["dtype"] = rng.choice(["f32", "F8", "U1", "XX", "", None, 7, ["F32"], {"F32": None}, {"F32": 1},
                                 {"F32": None, "F16": None}, "F32 ", rng.choice(DTYPES)])
    elif kind == 4:
        del t[rng.choice(["dtype", "shape", "data_offsets"])]
    elif kind == 5:                       # unknown fields are ignored by the library; their values still parse
        t[rng.choice(["extra", "__metadata__", "dtype "])] = rng.choice(
            [1, "x", None, [1, [2]], {"a": {"b": 1}}, 1e300, -0.5, 10 ** 20])
    elif kind == 6:                       # serde also reads a struct from a sequence
        k = names[0]
        v = h[k]
        h[k] = rng.choice([[v["dtype"], v["shape"], v["data_offsets"]], [v["dtype"], v["shape"]],
                           [v["dtype"], v["shape"], v["data_offsets"], 0]])
    elif kind == 7:                       # overlap / alias another tensor's range
        other = h[rng.choice(names)]
        t["data_offsets"] = list(other["data_offsets"])
    elif kind == 8:
        h[rng.choice(names)] = rng.choice([None, 1, "x", [], {}])
    elif kind == 9:                       # same shape, other dtype: byte count no longer matches
        t["dtype"] = rng.choice(DTYPES)
    elif kind == 10:
        t["shape"] = [d + rng.choice([-1, 1]) for d in t["shape"]] or [rng.choice([0, 2])]
    elif kind == 11:
        t["data_offsets"] = [t["data_offsets"][0] + 4, t["data_offsets"][1] + 4]
    elif kind == 12:
        h["__metadata__"] = rng.choice([None, {}, {"x": 1}, {"x": None}, [], "x", {"x": ["y"]}, {"": ""}])
    elif kind == 13:
        data = data + bytes(rng.randint(1, 9))
    elif kind == 14 and data:
        data = data[:-rng.randint(1, len(data))]
    else:                                 # raw-text damage below
        return h, data, damage_text(rng, h)
    return h, data, None


def damage_text(rng: random.Random, h: dict) -> bytes:
    text = json.dumps(h, ensure_ascii=False)
    names = _tensor_names(h)
    kind = rng.randrange(14)
    if kind == 0 and names:               # duplicate a tensor entry (the same or a different range)
        k = rng.choice(names)
        v = dict(h[k])
        if rng.random() < 0.5:
            v = {**v, "data_offsets": [0, 0], "shape": [0]}
        return (text[:-1] + ("," if len(h) else "") + json.dumps(k) + ":" + json.dumps(v) + "}").encode()
    if kind == 1:                         # duplicate __metadata__
        return (text[:-1] + ("," if len(h) else "") + '"__metadata__":{},"__metadata__":{}}').encode()
    if kind == 2 and names:               # duplicate field inside a tensor entry
        k = rng.choice(names)
        field = rng.choice(["dtype", "shape", "data_offsets", "extra"])
        value = json.dumps(h[k].get(field, 1)) if isinstance(h[k], dict) else "1"
        entry = json.dumps(h[k])
        if not (isinstance(h[k], dict) and entry != "{}"):
            return text.encode()
        dup_entry = entry[:-1] + f',"{field}":{value}}}'
        return text.replace(json.dumps(k) + ": " + entry, json.dumps(k) + ": " + dup_entry, 1).encode()
    if kind == 3:
        token = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-0", "01", "1.", ".5", "0x10", "1" + "0" * 400])
        return (text[:-1] + ("," if len(h) else "") + f'"__metadata__":{{"x":{token}}}}}').encode()
    if kind == 4 and names:
        token = rng.choice(["NaN", "Infinity", "1e400", "-0", "1e0", "4.0", "-0.0", "1" + "0" * 30])
        k = rng.choice(names)
        if isinstance(h[k], dict):
            entry = dict(h[k], extra=0)
            s = json.dumps(entry).replace('"extra": 0', f'"extra": {token}')
            return text.replace(json.dumps(k) + ": " + json.dumps(h[k]), json.dumps(k) + ": " + s, 1).encode()
        return text.encode()
    if kind == 5:                         # deep nesting (inside an ignored field or as the metadata)
        depth = rng.choice([10, 100, 124, 125, 126, 127, 128, 200, 1000, 5000])
        nest = rng.choice([("[" * depth, "]" * depth), ('{"k":' * depth + "1", "}" * depth)])
        if names and isinstance(h[names[0]], dict) and rng.random() < 0.7:
            entry = json.dumps(h[names[0]])
            s = entry[:-1] + ', "extra": ' + nest[0] + nest[1] + "}"
            return text.replace(json.dumps(names[0]) + ": " + entry, json.dumps(names[0]) + ": " + s, 1).encode()
        return ('{"__metadata__":' + nest[0] + nest[1] + "}").encode()
    if kind == 6:                         # lone or paired surrogate escapes
        esc = rng.choice(["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u00e9", "\\ud800x"])
        where = rng.randrange(3)
        if where == 0:
            return (text[:-1] + ("," if len(h) else "") + f'"__metadata__":{{"x":"{esc}"}}}}').encode()
        if where == 1:
            return (text[:-1] + ("," if len(h) else "") + f'"{esc}":{{"dtype":"F32","shape":[0],'
                    '"data_offsets":[0,0]}}').encode()
        if names and isinstance(h[names[0]], dict):
            entry = json.dumps(h[names[0]])
            s = entry[:-1] + f', "extra": ["{esc}"]}}'
            return text.replace(json.dumps(names[0]) + ": " + entry, json.dumps(names[0]) + ": " + s, 1).encode()
        return text.encode()
    if kind == 7:
        return text.encode() + rng.choice([b"\0", b"x", b"\x0b", b"\xc2\xa0", b" \t\r\n", b"}", b",", b"{}"])
    if kind == 8:
        return rng.choice([b"\xef\xbb\xbf", b" ", b"\n", b"\x0c", b""]) + text.encode()
    if kind == 9:                         # invalid UTF-8 in a string
        return text.encode().replace(b'"', b'"\xff', 1) if '"' in text else b"\xff"
    if kind == 10:
        return rng.choice([b"", b"[]", b"null", b"1", b'"x"', b"{", b"{}}", b"{,}", b'{"a":}', b"   "])
    if kind == 11:                        # control character inside a string
        return text.replace('"', '"\n', 1).encode() if '"' in text else b"{}"
    if kind == 12:                        # trailing comma
        return (text[:-1] + ",}").encode() if len(h) else b"{,}"
    b = bytearray(text.encode())          # kind 13: flip one byte of the header text
    if b:
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def make_case(rng: random.Random) -> bytes:
    h, data = random_valid(rng)
    r = rng.random()
    if r < 0.12:                          # valid, with or without padding
        return encode(h, data, pad=rng.choice([0, 0, 3, 7]))
    if r < 0.22:                          # header length field
        good = encode(h, data)
        n = len(good) - 8 - len(data)
        n2 = rng.choice([0, 1, n - 1, n + 1, n + len(data), n + len(data) + 1, 2 ** 31, 2 ** 64 - 1,
                         100_000_001, 10 ** 9])
        return struct.pack("<Q", n2) + good[8:]
    if r < 0.27:                          # a short file
        return encode(h, data)[:rng.randrange(0, 12)]
    if r < 0.35:                          # flip bytes anywhere
        b = bytearray(encode(h, data))
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    text = None
    for _ in range(rng.choice([1, 1, 1, 2])):
        if text is not None:
            break
        try:
            h, data, text = damage_header(rng, h, data)
        except (TypeError, KeyError, IndexError, AttributeError, ValueError):
            pass                          # an earlier change left nothing for this one to act on
    return encode(h, data, text=text)


# the two readers ------------------------------------------------------------------------------------------
def oracle(path):
    """(True, {name: array or None}) if the safetensors library opens the file, else (False, message)."""
    from safetensors import safe_open
    try:
        with safe_open(path, "np") as f:
            out = {}
            for k in f.keys():
                try:
                    out[k] = f.get_tensor(k)
                except Exception:           # a dtype NumPy lacks (bfloat16, fp8, fp4): header still valid
                    out[k] = None
            return True, out
    except Exception as e:                  # noqa: BLE001 - any refusal is a refusal
        return False, str(e)


def ours(path):
    """(True, SafetensorsFile) | (False, CheckpointError message) | ("foreign", repr of the exception)."""
    try:
        return True, SafetensorsFile(path)
    except CheckpointError as e:
        return False, str(e)
    except Exception as e:                  # noqa: BLE001 - this is what the fuzz looks for
        return "foreign", f"{type(e).__name__}: {e}"


def check_case(path, data: bytes) -> tuple[str, str]:
    with open(path, "wb") as f:
        f.write(data)
    ok_ref, ref = oracle(path)
    ok_ours, got = ours(path)
    if ok_ours == "foreign":
        return "foreign", got
    if ok_ref and not ok_ours:
        if "is listed more than once" in got:
            return "stricter", got
        return "disagree", f"library accepts, minig3n refuses: {got}"
    if ok_ours and not ok_ref:
        return "disagree", f"minig3n accepts, library refuses: {ref}"
    if not ok_ref:
        return "both_reject", got
    if sorted(got.names) != sorted(ref):
        return "disagree", f"names differ: {sorted(got.names)} vs {sorted(ref)}"
    for name, arr in ref.items():
        if arr is None or got.info(name)[0] not in _STORAGE:
            continue
        mine = np.asarray(got.raw(name))
        if mine.shape != arr.shape or mine.tobytes() != np.ascontiguousarray(arr).tobytes():
            return "disagree", f"tensor '{name}' bytes or shape differ"
    return "both_accept", ""


def run(cases: int, seed: int = 0, show: int = 0, out=None) -> Counter:
    rng = random.Random(seed)
    counts: Counter = Counter()
    shown = Counter()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "case.safetensors")
        for i in range(cases):
            data = make_case(rng)
            verdict, msg = check_case(path, data)
            counts[verdict] += 1
            if out is not None and verdict in ("disagree", "foreign", "stricter") and shown[verdict] < show:
                shown[verdict] += 1
                print(f"  case {i} {verdict}: {msg[:200]}\n    header: {data[8:8 + 300]!r}", file=out)
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz_safetensors", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000, help="number of files to generate (10000)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (0)")
    ap.add_argument("--show", type=int, default=5, help="print up to N examples of each kind of failure (5)")
    args = ap.parse_args(argv)
    import safetensors
    counts = run(args.cases, args.seed, args.show, out=sys.stdout)
    print(f"{args.cases} cases (seed {args.seed}, safetensors {safetensors.__version__}): "
          f"both accept {counts['both_accept']}, both reject {counts['both_reject']}, "
          f"disagreements {counts['disagree']}, foreign exceptions {counts['foreign']}, "
          f"stricter by design (duplicate tensor name) {counts['stricter']}")
    return 1 if counts["disagree"] or counts["foreign"] else 0


if __name__ == "__main__":
    sys.exit(main())
