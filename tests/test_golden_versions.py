"""Every golden fixture was written by the pinned reference: the versions stamped in its ``meta`` (by
``tests/reference/versions.py``) equal the pins of setup.cfg's ``reference`` extra. A fixture regenerated
with another torch / transformers / timm fails here, in the NumPy tier, before any numeric test can be
fooled by it. Pillow is not pinned (only the image fixture records it) and is not checked."""
import configparser
import re

import pytest

from tests.conftest import REPO
from tests.golden_io import GOLDENS, load_golden

pytestmark = pytest.mark.foundation


def reference_pins() -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    pins = {}
    for line in cfg["options.extras_require"]["reference"].split("\n"):
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)\s*", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def stamped_versions(meta) -> dict:
    """{package: version} of every string entry named after a pinned package, wherever it sits in meta."""
    found = {}
    pins = reference_pins()

    def walk(d):
        if isinstance(d, dict):
            for k, v in d.items():
                if isinstance(v, str) and k.lower() in pins:
                    found.setdefault(k.lower(), set()).add(v)
                else:
                    walk(v)
        elif isinstance(d, list):
            for v in d:
                walk(v)
    walk(meta)
    return found


def test_setup_cfg_pins_the_reference():
    assert {"torch", "transformers", "timm", "torchvision"} <= set(reference_pins())


FIXTURES = sorted(p.stem for p in GOLDENS.glob("*.safetensors"))


@pytest.mark.parametrize("name", FIXTURES)
def test_golden_stamped_with_pinned_reference(name):
    pins = reference_pins()
    found = stamped_versions(load_golden(name).meta)
    assert "transformers" in found, f"{name}: no transformers version in meta (stamp it with tests/reference/versions.py)"
    for pkg, versions in found.items():
        public = {v.split("+")[0] for v in versions}      # '2.14.1+cu130' is torch 2.14.1 built for CUDA
        assert public == {pins[pkg]}, f"{name}: written with {pkg} {sorted(versions)}, setup.cfg pins {pins[pkg]}"


def test_every_fixture_is_checked():
    assert len(FIXTURES) >= 22
