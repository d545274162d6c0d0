"""The README's "From Python" block runs as written (extracted from README.md, so it cannot drift), from
another directory, and prints what its comment says."""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.foundation


def readme_python_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the From Python section has exactly one python block"
    return blocks[0]


def test_readme_from_python_runs(tmp_path):
    code = readme_python_block()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MINIG3N_MODEL", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    promised = re.search(r"# (\(1, 3, \d+\) \d+ traced tensors)", code).group(1)   # the README's comment
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == promised, (lines[-1], promised)
    assert len(r.stdout.strip()) > len(promised) + 10        # the generated text came first
