"""The safetensors reader agrees with the ``safetensors`` library (the oracle, a test dependency only) on
which files are valid: a few hundred generated files here, ``python -m tests.fuzz_safetensors --cases 10000``
for the long run. Plus hand-made files for each rule, each refused with a message naming the tensor or field."""
import json
import struct

import numpy as np
import pytest

from minig3n.checkpoint import SafetensorsFile, save_safetensors
from minig3n.errors import CheckpointError
from tests import fuzz_safetensors
from tests.conftest import WEIGHTS

pytestmark = pytest.mark.foundation


def test_differential_fuzz_agrees_with_the_library():
    counts = fuzz_safetensors.run(400, seed=1)
    assert counts["disagree"] == 0 and counts["foreign"] == 0, counts
    # the generator reaches both sides of the line and the one stricter rule
    assert counts["both_accept"] > 40 and counts["both_reject"] > 200, counts


def _write(path, header=None, data=b"", text=None, n=None):
    hb = text if text is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(hb) if n is None else n) + hb + data)
    return path


def T(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


ENTRY = b'{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'

# (id, header dict or raw text, data bytes, culprit the message must name)
BAD = [
    ("shape float", {"w": T(shape=[4.0], offsets=[0, 16])}, bytes(16), r"'w'.*shape \[4.0\]"),
    ("shape int", {"w": T(shape=5)}, bytes(4), r"'w'.*shape 5"),
    ("shape null", {"w": T(shape=None)}, bytes(4), r"'w'.*shape null"),
    ("shape huge", {"w": T(shape=[10 ** 30])}, bytes(4), r"'w'.*shape \[1000000000000000000000000000000\]"),
    ("shape negative", {"w": T(shape=[-2, -2], offsets=[0, 16])}, bytes(16), r"'w'.*shape \[-2, -2\]"),
    ("shape overflow", {"w": T(shape=[2 ** 40, 2 ** 40])}, bytes(4), r"'w'.*64-bit"),
    ("dtype list", {"w": T(dtype=["F32"])}, bytes(4), r"'w'.*dtype \[\"F32\"\]"),
    ("dtype unknown", {"w": T(dtype="F31")}, bytes(4), r"'w'.*dtype \"F31\""),
    ("offsets strings", {"w": T(offsets=["0", "4"])}, bytes(4), r"'w'.*data_offsets"),
    ("offsets floats", {"w": T(offsets=[0.0, 4.0])}, bytes(4), r"'w'.*data_offsets"),
    ("offsets negative", {"w": T(offsets=[-4, 0])}, bytes(4), r"'w'.*data_offsets \[-4, 0\]"),
    ("missing field", {"w": {"dtype": "F32", "shape": [1]}}, bytes(4), r"'w'.*'data_offsets' is missing"),
    ("byte count", {"w": T(shape=[2])}, bytes(4), r"'w' F32\[2\] needs 8 bytes, its byte range holds 4"),
    ("overlap", {"a": T(), "b": T()}, bytes(4), r"tensor '[ab]' has byte range \[0, 4\).*begin at byte 4"),
    ("gap", {"a": T(), "b": T(offsets=[8, 12])}, bytes(12), r"tensor 'b'.*begin at byte 4, where tensor 'a' ends"),
    ("not from 0", {"a": T(offsets=[4, 8])}, bytes(8), r"tensor 'a'.*begin at byte 0"),
    ("trailing bytes", {"a": T()}, bytes(5), r"1 bytes after the last tensor"),
    ("truncated data", {"a": T(shape=[2], offsets=[0, 8])}, bytes(4), r"truncated file: tensor 'a' ends at byte"),
    ("metadata not strings", {"__metadata__": {"x": 1}}, b"", r"'__metadata__' must be an object of strings"),
    ("not an object", None, b"", r"expected a JSON object, got an array"),
    ("duplicate tensor", None, bytes(4), r"tensor 'a' is listed more than once"),
    ("duplicate field", None, bytes(4), r"'a'.*'dtype' is given more than once"),
    ("NaN token", None, b"", r"not valid JSON \(NaN is not a JSON value"),
    ("Infinity token", None, bytes(4), r"not valid JSON \(Infinity"),
    ("1000 deep", None, b"", r"nested deeper than 127 levels"),
    ("not UTF-8", None, b"", r"not UTF-8"),
    ("lone surrogate", None, b"", r"unpaired UTF-16 surrogate"),
]
RAW = {
    "not an object": b"[]",
    "duplicate tensor": b'{"a":' + ENTRY + b',"a":' + ENTRY + b"}",
    "duplicate field": b'{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    "NaN token": b'{"__metadata__":{"x":"1"},"a":NaN}',
    "Infinity token": b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":Infinity}}',
    "1000 deep": b'{"__metadata__":' + b"[" * 1000 + b"]" * 1000 + b"}",
    "not UTF-8": b'{"\xff":1}',
    "lone surrogate": b'{"__metadata__":{"x":"\\ud800"}}',
}


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_header_named(tmp_path, case):
    name, header, data, culprit = case
    path = _write(tmp_path / "m.safetensors", header, data, text=RAW.get(name))
    with pytest.raises(CheckpointError, match=culprit) as e:
        SafetensorsFile(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_header_length_beyond_cap_is_refused_before_reading(tmp_path):
    """A 24-byte file that claims a 2 GiB header, and a real file whose header is past the 100 MB cap: both
    refused from the 8-byte length alone (nothing of that size is read or allocated)."""
    path = _write(tmp_path / "m.safetensors", text=b"{}" + bytes(14), n=2 ** 31)
    with pytest.raises(CheckpointError, match="header length 2147483648 is larger than the 16 bytes"):
        SafetensorsFile(path)
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:                 # sparse: 100 MB + 1 of header that is never written
        f.write(struct.pack("<Q", 100_000_001))
        f.truncate(8 + 100_000_001)
    with pytest.raises(CheckpointError, match="exceeds the 100,000,000-byte limit"):
        SafetensorsFile(big)


def test_byte_range_must_match_dtype_times_shape(tmp_path):
    """Kills the mutant that drops the byte-count check: a valid file whose F32[2] range is widened to 12
    bytes (and the file to match) must be refused, and the untouched file read back exactly."""
    save_safetensors(tmp_path / "ok.safetensors", {"w": np.array([1.5, -2.0], np.float32)})
    assert SafetensorsFile(tmp_path / "ok.safetensors").raw("w").tolist() == [1.5, -2.0]
    path = _write(tmp_path / "m.safetensors", {"w": T(shape=[2], offsets=[0, 12])}, bytes(12))
    with pytest.raises(CheckpointError, match=r"'w' F32\[2\] needs 8 bytes, its byte range holds 12"):
        SafetensorsFile(path)


def test_valid_edge_cases_accepted(tmp_path):
    """What the library accepts, minig3n accepts too: zero-size tensors, scalars, names out of byte order,
    unknown fields, padding, other dtypes (opened; reading them is refused by name)."""
    header = {"b": T(offsets=[4, 8]), "a": T(), "z": T(shape=[0], offsets=[8, 8]), "s": T(shape=[], offsets=[8, 12]),
              "i": {**T(dtype="I64", shape=[1], offsets=[12, 20]), "extra": [1, {"x": None}]}}
    data = np.array([1, 2, 3], np.float32).tobytes() + bytes(8)
    path = _write(tmp_path / "m.safetensors", text=json.dumps(header).encode() + b"    ", data=data)
    f = SafetensorsFile(path)
    assert f.raw("a").tolist() == [1.0] and f.raw("b").tolist() == [2.0] and f.raw("s").tolist() == 3.0
    assert f.raw("z").shape == (0,)
    with pytest.raises(CheckpointError, match="tensor 'i' has dtype I64; minig3n reads F64, F32, F16, BF16 only"):
        f.raw("i")


def test_directory_instead_of_file(tmp_path):
    from minig3n.checkpoint import Checkpoint
    (tmp_path / "config.json").write_text((WEIGHTS / "nano-gemma3n" / "config.json").read_text())
    (tmp_path / "model.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors: is a directory"):
        Checkpoint(tmp_path)
