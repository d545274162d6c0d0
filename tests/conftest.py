"""Shared pytest setup. Reference tests (marker ``reference``) are deselected by default (setup.cfg) and
run with ``pytest -m reference`` once the ``reference`` extra is installed."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "weights"
TINY = WEIGHTS / "tiny-random-gemma3n"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")
