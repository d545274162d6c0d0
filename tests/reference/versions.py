"""The reference versions, in one place. Every ``goldens_*.py`` stamps its fixtures' ``meta`` with
``stamp(...)``, and the NumPy-tier test ``tests/test_golden_versions.py`` checks each fixture's stamp
against the pins of setup.cfg's ``reference`` extra, so a fixture written by another reference version is
caught. (Where a fixture puts its stamp, top level, ``versions`` or ``reference``, is kept as it was so that
regenerating gives byte-identical files.)"""
from __future__ import annotations

import PIL
import timm
import torch
import transformers

REFERENCE_VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__,
                      "timm": timm.__version__, "pillow": PIL.__version__}


def stamp(*names: str, local: bool = True) -> dict:
    """``{name: installed version}`` for the given packages; ``local=False`` drops a ``+cu130``-style
    local suffix (some fixtures were stamped that way)."""
    return {n: REFERENCE_VERSIONS[n] if local else REFERENCE_VERSIONS[n].split("+")[0] for n in names}
