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
  The folder is a package of its own (``tests/grading/student.py``): it is put first on ``sys.path`` and
  imported as ``minig3n_student``, so the student's files import each other either way
  (``from laurel import laurel`` or ``from .laurel import laurel``) and import minig3n's helpers
  absolutely (``from minig3n.ops import linear, rms_norm``).
* A file that exists but fails to import is an error (the test fails with the import error), never a
  silent fall-back to minig3n. A ``MINIG3N_STUDENT`` that is not a directory is an error too.
* A graded name (tests/grading/points.csv) that the student's file only re-exports from minig3n's module
  of the same name (``from minig3n.laurel import laurel``) is refused with ``NotYourCodeError``: green must
  mean the student's code ran. (The full check, including wrappers and golden-file reads, is the grader:
  ``python -m tests.grade``.)
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
    """The student's module ``<dir>/<name>.py`` (``minig3n_student.<name>``, reloaded when the file changes),
    or None."""
    d = student_dir()
    if d is None:
        return None
    path = d / f"{name}.py"
    if not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _loaded:
        from tests.grading import student
        for stale in [k for k in _loaded if k[0] == str(path)]:
            del _loaded[stale]
        for mod_name in (f"{student.PKG}.{name}", name):     # both import styles name the same file
            m = sys.modules.get(mod_name)
            if m is not None and getattr(m, "__file__", None) and Path(m.__file__).resolve() == path:
                del sys.modules[mod_name]
        try:
            _loaded[key] = student.import_module(d, name)
        except student.StudentImportError as e:
            raise StudentImportError(str(e)) from e
    return _loaded[key]


class NotYourCodeError(RuntimeError):
    pass


def _graded_names(module: str) -> set:
    from tests.grading.points import load
    return {r.function for r in load() if r.module == module}


class _Resolver:
    """Attribute access picks the student's definition if there is one, else minig3n's."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        student = student_module(self._name)
        if student is not None and attr in vars(student):
            obj = vars(student)[attr]
            if getattr(obj, "__module__", None) == f"minig3n.{self._name}" and attr in _graded_names(self._name):
                raise NotYourCodeError(f"{student.__file__}: {attr} is minig3n's own minig3n.{self._name}.{attr}, "
                                       "re-exported; write your own (walkthrough/ASSIGNMENTS.md)")
            return obj
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
