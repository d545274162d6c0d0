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


def pytest_ignore_collect(collection_path, config):
    """``test_ref_*.py`` files import torch/transformers/timm at module level and hold only ``reference``
    tests. The default run (``-m "not reference"``) deselects them all anyway, so it does not import them:
    the NumPy tier must run where the reference stack is not installed."""
    if collection_path.name.startswith("test_ref_") and "reference" not in (config.option.markexpr or "").replace(
            "not reference", ""):
        return True
    return None


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_report_header(config):
    """With MINIG3N_STUDENT set, say whose code the adapters call (tests/adapters/_impl.py)."""
    from tests.adapters._impl import describe
    return describe()


def pytest_sessionfinish(session, exitstatus):
    """In CI a skipped test fails the run: a skip there hides a missing install step."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and exitstatus == 0:
        reporter.write_line(f"CI: {skipped} test(s) skipped; minig3n's CI requires zero skips", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="module")
def one_torch_thread():
    """Reference tests: torch on one thread (stable timings on a shared 2-core machine, identical sums)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
