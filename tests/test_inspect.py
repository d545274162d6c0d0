"""``minig3n inspect``: every tensor of the shipped checkpoints is checked against their configs."""
import json
import shutil

import pytest

from minig3n.cli import main
from tests.conftest import TINY, WEIGHTS

pytestmark = pytest.mark.foundation


@pytest.mark.parametrize("model, n_tensors", [(TINY, 379), (WEIGHTS / "nano-gemma3n", 146)])
def test_inspect_shipped_checkpoints(model, n_tensors, capsys):
    assert main(["inspect", "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert f"{n_tensors} tensors checked against the config, all present with the right shape" in out


def test_inspect_names_a_tensor_the_config_contradicts(tmp_path, capsys):
    """Raising laurel_rank in config.json makes every laurel weight the wrong shape: the first one is named."""
    d = tmp_path / "ckpt"
    shutil.copytree(TINY, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["laurel_rank"] += 1
    (d / "config.json").write_text(json.dumps(cfg))
    assert main(["inspect", "--model", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minig3n inspect: error:") and "laurel.linear_left.weight' has shape" in err
