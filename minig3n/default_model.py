"""Where ``minig3n generate`` finds its model when no ``--model`` is given.

The repository ships two small checkpoints in ``weights/``: ``nano-gemma3n`` (trained here on
Shakespeare, the default) and ``tiny-random-gemma3n`` (random weights, the fallback). ``pip install .``
copies both into ``<prefix>/share/minig3n/weights/`` (``[options.data_files]`` in ``setup.cfg``), so an
installed minig3n finds them from any directory. Resolution order, first complete checkpoint wins:

1. ``$MINIG3N_MODEL`` (a checkpoint directory), if set;
2. ``weights/<name>`` next to the ``minig3n/`` package (a source checkout or an editable install);
3. ``<sys.prefix>/share/minig3n/weights/<name>`` (a regular ``pip install .``, venv or system);
4. ``<site.USER_BASE>/share/minig3n/weights/<name>`` (``pip install --user .``);

with ``<name>`` = ``nano-gemma3n``, then ``tiny-random-gemma3n``. "Complete" means ``config.json``,
``tokenizer.model`` and ``model.safetensors`` (or its index) are present, so a directory still being
written (e.g. during training) is skipped.
"""
from __future__ import annotations

import os
import site
import sys
from pathlib import Path

from .errors import CheckpointError

DEFAULT_MODELS = ("nano-gemma3n", "tiny-random-gemma3n")   # in order of preference
ENV_VAR = "MINIG3N_MODEL"


def search_roots() -> list[Path]:
    """The directories that may hold ``nano-gemma3n/`` and ``tiny-random-gemma3n/``, in search order."""
    roots = [Path(__file__).resolve().parent.parent / "weights",
             Path(sys.prefix) / "share" / "minig3n" / "weights"]
    if getattr(site, "USER_BASE", None):
        roots.append(Path(site.USER_BASE) / "share" / "minig3n" / "weights")
    return roots


def is_complete(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "tokenizer.model").is_file() and (
        (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file())


def default_model_dir() -> Path:
    """The default checkpoint directory (order in the module docstring); one-line error if none is found."""
    env = os.environ.get(ENV_VAR)
    if env:
        if not is_complete(Path(env)):
            raise CheckpointError(f"${ENV_VAR}={env} is not a checkpoint directory (expected config.json, "
                                  "tokenizer.model and model.safetensors in it); fix or unset it")
        return Path(env)
    roots = search_roots()
    for name in DEFAULT_MODELS:
        for root in roots:
            if is_complete(root / name):
                return root / name
    looked = ", ".join(str(r / DEFAULT_MODELS[0]) for r in roots)
    raise CheckpointError(f"no default model (looked for {DEFAULT_MODELS[0]} and {DEFAULT_MODELS[1]} in: "
                          f"{looked}); pass --model DIR, set ${ENV_VAR}=DIR, or reinstall with "
                          "'pip install .' from a minig3n checkout (it installs weights/ into "
                          "<prefix>/share/minig3n/weights)")
