"""Non-finite values are caught where they first appear: a forward over corrupt weights stops with exit 2 and
one line naming the first non-finite traced tensor (instead of printing <pad><pad> with exit 0); slice refuses
to copy a corrupt tensor forward. The expected name is derived independently: a full trace of the same
forward with the checks off, and the first name in forward order whose tensor is not finite."""
import os
import shutil

import numpy as np
import pytest

from minig3n import decoder
from minig3n.errors import NumericsError
from minig3n.safetensors_io import SafetensorsFile
from tests.conftest import TINY, WEIGHTS
from tests.reliability import assert_one_line_error, cli, clone

pytestmark = pytest.mark.text

NANO = WEIGHTS / "nano-gemma3n"


def corrupt(src, dst, name, value=np.nan, index=0):
    """A copy of checkpoint ``src`` in ``dst`` whose tensor ``name`` has ``value`` at flat ``index``."""
    d = clone(src, dst, **{"model.safetensors": None})
    f = SafetensorsFile(src / "model.safetensors")
    dtype, _ = f.info(name)
    begin = f.data_start + f.header[name]["data_offsets"][0]
    data = bytearray((src / "model.safetensors").read_bytes())
    if dtype == "F32":
        data[begin + 4 * index:begin + 4 * index + 4] = np.float32(value).tobytes()
    else:                                   # BF16: the top half of the float32
        data[begin + 2 * index:begin + 2 * index + 2] = np.float32(value).tobytes()[2:]
    (d / "model.safetensors").write_bytes(bytes(data))
    return d


def first_nonfinite_by_full_trace(model_dir, ids):
    model = decoder.load_text_model(model_dir)
    trace = {}
    with np.errstate(all="ignore"):
        decoder._forward(model, np.asarray([ids]), trace=trace, check=False)
    return next(k for k, v in trace.items() if not np.isfinite(v).all())


CASES = [  # (id, tensor, value, the module the message must name)
    ("nan laurel weight", "model.layers.2.laurel.linear_left.weight", np.nan, "model.layers.2.laurel"),
    ("inf mlp weight", "model.layers.4.mlp.down_proj.weight", np.inf, "model.layers.4.mlp"),
    ("nan embedding row", "model.embed_tokens.weight", np.nan, "model.embed_tokens"),
    ("nan final norm", "model.norm.weight", np.nan, "model.norm"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_generate_names_the_first_nonfinite_tensor(capsys, tmp_path, case):
    _, tensor, value, module = case
    # the embedding row: corrupt the row of <bos> (id 2), which every prompt starts with
    d = corrupt(NANO, tmp_path / "m", tensor, value, index=2 * 128 if "embed_tokens" in tensor else 0)
    ids = [2, 100, 200, 300]
    assert first_nonfinite_by_full_trace(d, ids) == module
    code, out, err = cli(capsys, "generate", "--model", d, "--prompt", "Once upon", "--max-new-tokens", 4)
    line = assert_one_line_error(code, err, "generate", f"{module}: ", "values are", "first non-finite tensor")
    assert out == "" and "<pad>" not in out + err
    code, _, err = cli(capsys, "trace", "--model", d, "--ids", ",".join(map(str, ids)), "--out", tmp_path / "t.st")
    assert_one_line_error(code, err, "trace", f"{module}: ")
    assert not (tmp_path / "t.st").exists() and sorted(os.listdir(tmp_path)) == ["m"]
    del line


def test_forward_without_corruption_is_unchanged():
    """The checks change nothing: the checked forward equals the unchecked one bit for bit."""
    model = decoder.load_text_model(NANO)
    ids = np.asarray([[2, 100, 200, 300, 5]])
    a, _ = decoder.forward(model, ids)
    b, _ = decoder._forward(model, ids, check=False)
    np.testing.assert_array_equal(a, b)


def test_nonfinite_inputs_embeds_named():
    model = decoder.load_text_model(NANO)
    e = np.zeros((1, 2, model.cfg.hidden_size))
    e[0, 1, 3] = np.inf
    with pytest.raises(NumericsError, match=r"inputs_embeds: 1 of 256 values are NaN or infinite"):
        decoder.forward(model, np.asarray([[2, 5]]), inputs_embeds=e)


def test_vision_tower_nan_named(capsys, tmp_path):
    from PIL import Image
    name = "model.vision_tower.timm_model.conv_stem.conv.weight"
    d = corrupt(TINY, tmp_path / "m", name)
    Image.new("RGB", (16, 16), (90, 20, 200)).save(tmp_path / "x.png")
    code, _, err = cli(capsys, "generate", "--model", d, "--chat", "What?", "--image", tmp_path / "x.png",
                       "--max-new-tokens", 2)
    assert_one_line_error(code, err, "generate", "model.vision_tower.timm_model.conv_stem", "values are NaN")


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_slice_refuses_a_corrupt_tensor(capsys, tmp_path, value):
    name = "model.language_model.layers.1.mlp.up_proj.weight"
    d = corrupt(TINY, tmp_path / "m", name, value, index=7)
    code, _, err = cli(capsys, "slice", "--model", d, "--out", tmp_path / "cut", "--skip-layers", "3")
    assert_one_line_error(code, err, "slice", f"tensor '{name}' holds 1 NaN or infinite value(s)",
                          "first at output index [0, 7]", "refuses to copy a corrupt tensor")
    assert sorted(os.listdir(tmp_path)) == ["m"]
    shutil.rmtree(d)


def test_real_stderr_is_one_line(tmp_path):
    """Outside pytest's capture: NumPy's 'invalid value encountered' warnings do not add lines."""
    import subprocess
    import sys
    from tests.conftest import REPO
    d = corrupt(NANO, tmp_path / "m", "model.layers.4.mlp.down_proj.weight", np.inf)
    r = subprocess.run([sys.executable, "-m", "minig3n", "generate", "--model", str(d), "--prompt", "Once",
                        "--max-new-tokens", "3"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if not ln.endswith(" ...")]   # a busy machine's progress notice
    assert len(lines) == 1 and lines[0].startswith("minig3n generate: error: model.layers.4.mlp: "), r.stderr

