"""What ``import minig3n`` sets for the whole process (minig3n/__init__.py), each in a fresh interpreter.

* ``OPENBLAS_THREAD_TIMEOUT=4`` when NumPy is not imported yet and the variable is unset.
* glibc's malloc keeps freed memory (``_keep_freed_memory``): a freed 16 MiB NumPy array stays in the
  process (resident memory unchanged) instead of going back to the kernel, which glibc does by default for
  a block that size (it is above the default 128 KiB mmap threshold, so it is mapped and unmapped on its
  own). ``MINIG3N_MALLOC=default`` and a ``MALLOC_TRIM_THRESHOLD_`` of the user's leave malloc alone.
"""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FREE_16_MIB = """
import minig3n, numpy as np
def resident():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
a = np.ones(16 << 20, np.uint8)
before = resident()
del a
print(minig3n.MALLOC_TUNED, (before - resident()) >> 20)
"""


def _run(code, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "MINIG3N_MALLOC"))}
    full.update(env, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True)
    return out.stdout.split()


def _glibc() -> bool:
    return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))


def test_openblas_thread_timeout_default():
    code = "import os, minig3n, numpy; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    assert _run(code) == ["4"]
    assert _run(code, OPENBLAS_THREAD_TIMEOUT="7") == ["7"]


@pytest.mark.parametrize("env, tuned", [({}, True), ({"MINIG3N_MALLOC": "default"}, False),
                                        ({"MALLOC_TRIM_THRESHOLD_": str(1 << 20)}, False)],
                         ids=["default", "MINIG3N_MALLOC=default", "user's MALLOC_TRIM_THRESHOLD_"])
def test_freed_memory_is_kept_for_reuse(env, tuned):
    flag, released_mib = _run(FREE_16_MIB, **env)
    if not _glibc():                                   # nothing to set elsewhere: the flag says so
        assert flag == "False"
        return
    assert flag == str(tuned)
    if tuned:
        assert int(released_mib) <= 1                  # kept: the next temporary reuses these pages
    else:
        assert int(released_mib) >= 15                 # glibc's default: unmapped at once
