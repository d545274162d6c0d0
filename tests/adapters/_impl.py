"""Which implementation the adapters call: minig3n's, or a student's (the classroom-assignment switch).

The idea: every NumPy-tier test reaches minig3n only through ``tests/adapters/<topic>.py``, and the adapters
reach minig3n only through ``impl(module)``. ``impl("laurel").laurel`` is

* the student's ``laurel`` if the environment variable ``MINIG3N_STUDENT`` names a directory holding
  ``laurel.py`` and that file defines ``laurel``;
* ``minig3n.laurel.laurel`` otherwise (so a student can re-implement one function at a time: every function
  their file does not define is minig3n's).

So ``MINIG3N_STUDENT=~/my_g3n pytest -m text -k laurel`` grades the student's ``laurel`` against the
reference's golden outputs with exactly the tests that check minig3n. Without the variable nothing changes:
``impl(name)`` hands out minig3n's own functions.

Rules (see walkthrough/ASSIGNMENTS.md):

* A student file is a plain Python file ``<dir>/<module>.py`` named like the minig3n module it replaces.
  It is imported by path under the name ``minig3n_student.<module>``, so it must use absolute imports
  (``from minig3n.ops import linear, rms_norm``), not minig3n's relative ones (``from .ops import ...``).
* A file that exists but fails to import is an error (the test fails with the import error), never a
  silent fall-back to minig3n. A ``MINIG3N_STUDENT`` that is not a directory is an error too.
* Only the adapters' direct calls are swapped: minig3n's own modules keep calling minig3n (the student's
  ``laurel`` is graded by the LAuReL tests, not inside minig3n's decoder layer).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

ENV = "MINIG3N_STUDENT"
_loaded: dict = {}   # (path, mtime) -> module


class StudentImportError(ImportError):
    pass


def student_dir() -> Path | None:
    """The directory named by MINIG3N_STUDENT, or None when the variable is unset or empty."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    d = Path(value).expanduser().resolve()
    if not d.is_dir():
        raise StudentImportError(f"{ENV}={value!r}: not a directory (expected the folder holding your "
                                 "re-implemented modules, e.g. laurel.py)")
    return d


def student_module(name: str):
    """The student's module ``<dir>/<name>.py``, imported by path (cached per file version), or None."""
    d = student_dir()
    if d is None:
        return None
    path = d / f"{name}.py"
    if not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _loaded:
        mod_name = f"minig3n_student.{name}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise StudentImportError(f"{path}: importing your module failed ({type(e).__name__}: {e}); "
                                     "use absolute imports such as 'from minig3n.ops import rms_norm'") from e
        _loaded[key] = module
    return _loaded[key]


class _Resolver:
    """Attribute access picks the student's definition if there is one, else minig3n's."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        student = student_module(self._name)
        if student is not None and attr in vars(student):
            return vars(student)[attr]
        return getattr(importlib.import_module(f"minig3n.{self._name}"), attr)

    def __repr__(self):
        return f"impl({self._name!r})"


def impl(name: str) -> _Resolver:
    """``impl("laurel").laurel``: the function the tests grade (the student's, or minig3n's)."""
    return _Resolver(name)


def source_of(name: str, attr: str) -> str:
    """'student' or 'minig3n': where ``impl(name).<attr>`` comes from (for reports and tests)."""
    student = student_module(name)
    return "student" if student is not None and attr in vars(student) else "minig3n"


def describe() -> str | None:
    """One line for pytest's header: whose code the adapters call (None when MINIG3N_STUDENT is unset)."""
    try:
        d = student_dir()
    except StudentImportError as e:
        return str(e)
    if d is None:
        return None
    files = sorted(p.name for p in d.glob("*.py"))
    return (f"{ENV}={d}: grading your {', '.join(files) or '(no .py files found)'}; every function they do not "
            "define is minig3n's")
