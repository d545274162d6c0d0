"""A regular (non-editable) install works from any directory: the wheel carries the package and the
embedded checkpoints (``[options.data_files]`` -> ``<prefix>/share/minig3n/weights``), and
``minig3n generate`` finds its default model there (``minig3n/default_model.py``).

The install goes into a fresh venv made for the test, with ``--no-deps --no-build-isolation`` so that no
network is needed: the venv sees the running interpreter's site-packages (numpy, sentencepiece, ...,
setuptools) through a ``.pth`` line, which does not process the ``.pth`` hooks of an editable install
there, so ``import minig3n`` can only find the installed copy. The checkout is copied first so that the
build leaves nothing behind in the working tree.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import sysconfig
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.foundation

_SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                               "goldens", "*.ipynb_checkpoints")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=_SKIP)
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "_minig3n_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MINIG3N_MODEL")}
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", str(src)], capture_output=True, text=True, env=env,
                       cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.rmtree(src)                                  # the installed copy must not need the checkout
    return env_dir, env, tmp


def _run(installed, *args):
    env_dir, env, tmp = installed
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    return subprocess.run([env_dir / "bin" / "minig3n", *args], capture_output=True, text=True, env=env,
                          cwd=elsewhere, timeout=300)


def test_installed_version(installed):
    from minig3n import __version__
    r = _run(installed, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"minig3n {__version__}", r.stdout + r.stderr


def test_installed_generate_from_another_directory(installed):
    env_dir, env, tmp = installed
    r = _run(installed, "generate", "--prompt", "To be", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    assert "new tokens: 5" in r.stderr and r.stdout.strip(), r.stdout + r.stderr
    where = subprocess.run([env_dir / "bin" / "python", "-c",
                            "import minig3n, minig3n.default_model as d; print(minig3n.__file__); "
                            "print(d.default_model_dir())"],
                           capture_output=True, text=True, env=env, cwd=tmp / "elsewhere", check=True)
    module, model = where.stdout.split()
    assert Path(module).is_relative_to(env_dir), module            # the installed copy, not the checkout
    assert Path(model) == env_dir / "share" / "minig3n" / "weights" / "nano-gemma3n"


def test_installed_ships_every_checkpoint_file(installed):
    env_dir = installed[0]
    for name in ("nano-gemma3n", "tiny-random-gemma3n"):
        want = sorted(p.name for p in (REPO / "weights" / name).iterdir() if p.is_file())
        got = sorted(p.name for p in (env_dir / "share" / "minig3n" / "weights" / name).iterdir())
        assert got == want, name


def test_no_default_model_error_says_what_to_do(installed, tmp_path):
    env_dir, env, tmp = installed
    share = env_dir / "share" / "minig3n" / "weights"
    hidden = env_dir / "share" / "minig3n" / "weights.hidden"
    share.rename(hidden)
    try:
        env2 = dict(env, PYTHONUSERBASE=str(tmp_path))
        r = subprocess.run([env_dir / "bin" / "minig3n", "generate", "--prompt", "x"], capture_output=True,
                           text=True, env=env2, cwd=tmp_path)
    finally:
        hidden.rename(share)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no default model" in r.stderr and "--model DIR" in r.stderr and str(share) in r.stderr, r.stderr
