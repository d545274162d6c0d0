"""A student's folder as a package of its own, and the guard that refuses code that is not theirs.

Loading: the folder is put first on ``sys.path`` *and* made the package ``minig3n_student`` (its
``__path__`` is the folder), so inside it both ``from laurel import laurel`` and ``from .laurel import laurel``
work. The grader takes every graded function from ``minig3n_student.<module>``. Student module names that
clash with the repository's own top-level names (``minig3n``, ``tests``) are refused.

The guard (``Guard``), active while the student's module is imported and while a graded function runs:

* **golden files**: an audit hook (``sys.addaudithook``, event ``open``) flags any file opened under
  ``tests/goldens/``; the same hook flags starting another process, replacing the trace hook, and reaching
  the grader's frames or objects (``sys._getframe``, ``inspect.currentframe``, ``gc.get_referrers``,
  ``traceback.tb_frame``: the grader's frames hold the cases and their expected outputs);
* **minig3n's implementation**: a trace hook (``sys.settrace``, call events only) flags any call into code defined in the
  minig3n module the assignment replaces (``minig3n/laurel.py`` for LAuReL), whoever holds the reference
  (a re-export, a wrapper, a subclass, an alias taken at import time). Names the assignment allows from that
  module (a dataclass, a config helper: ``ALLOWED`` in ``tests/grading/points.py``) are not flagged; every
  other minig3n module (``ops.linear``, ``ops.rms_norm``, ``config`` ...) is allowed;
* **origin**: a graded object whose ``__module__`` or code file is minig3n's is refused before it runs.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import sys
import threading
import types
from pathlib import Path

PKG = "minig3n_student"
REPO = Path(__file__).resolve().parents[2]
GOLDENS = (REPO / "tests" / "goldens").resolve()
MINIG3N = (REPO / "minig3n").resolve()
RESERVED = {"minig3n", "tests", "walkthrough", PKG}
FRAME_ATTRS = {"tb_frame", "gi_frame", "cr_frame", "ag_frame"}
# Standard-library callers of sys._getframe that only read their own caller's module name (namedtuple's and
# typing's __module__ bookkeeping, run when a student's import pulls those modules in afresh): not flagged.
BOOKKEEPING_GETFRAME = {("collections/__init__.py", "namedtuple"), ("typing.py", "_caller")}


class StudentImportError(ImportError):
    pass


def load_package(folder) -> types.ModuleType:
    """Make ``folder`` importable as ``minig3n_student`` (and its files as top-level modules). Idempotent per
    folder; a different folder first forgets the previous one's modules."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise StudentImportError(f"{folder}: not a directory (expected the folder holding your modules, "
                                 "e.g. laurel.py)")
    clash = sorted(p.stem for p in folder.glob("*.py") if p.stem in RESERVED)
    if clash:
        raise StudentImportError(f"{folder}: rename {', '.join(c + '.py' for c in clash)}: the name is the "
                                 "repository's own package")
    pkg = sys.modules.get(PKG)
    if pkg is not None and getattr(pkg, "__path__", None) == [str(folder)]:
        return pkg
    forget()
    pkg = types.ModuleType(PKG)
    pkg.__path__ = [str(folder)]
    pkg.__file__ = None
    pkg.__package__ = PKG
    sys.modules[PKG] = pkg
    sys.path.insert(0, str(folder))
    pkg.__minig3n_student_folder__ = folder
    return pkg


def forget() -> None:
    """Drop a previously loaded student folder from sys.modules and sys.path."""
    pkg = sys.modules.get(PKG)
    if pkg is None:
        return
    folder = str(getattr(pkg, "__minig3n_student_folder__", ""))
    for name, m in list(sys.modules.items()):
        f = getattr(m, "__file__", None) or ""
        if name == PKG or name.startswith(PKG + ".") or (folder and f.startswith(folder + "/")):
            del sys.modules[name]
    while folder in sys.path:
        sys.path.remove(folder)
    importlib.invalidate_caches()


def import_module(folder, name: str, guard: "Guard | None" = None):
    """``minig3n_student.<name>`` or None when the folder has no ``<name>.py``; an import error is raised as
    StudentImportError naming the file."""
    load_package(folder)
    path = Path(folder).expanduser().resolve() / f"{name}.py"
    if not path.is_file():
        return None
    full = f"{PKG}.{name}"
    if full in sys.modules:
        return sys.modules[full]
    try:
        if guard is not None:
            with guard.watch(name, importing=True):
                return importlib.import_module(full)
        return importlib.import_module(full)
    except (Exception, SystemExit) as e:   # the student's file: any exception (or sys.exit) is theirs
        sys.modules.pop(full, None)
        if isinstance(e, NotYourCode):
            raise
        raise StudentImportError(f"{path}: importing your module failed ({type(e).__name__}: {e})") from e


# The guard ----------------------------------------------------------------------------------------------
class NotYourCode(Exception):
    """The graded code used minig3n's implementation of the assignment or read a golden file."""


def origin_problem(obj, module: str) -> str | None:
    """Why ``obj`` (a graded function or class) is not the student's, or None."""
    mod = getattr(obj, "__module__", "") or ""
    if mod == "minig3n" or mod.startswith("minig3n."):
        return f"it is minig3n's own object ({mod}.{getattr(obj, '__qualname__', '?')}), re-exported"
    code = getattr(obj, "__code__", None)
    if code is not None and Path(code.co_filename).resolve().is_relative_to(MINIG3N):
        return f"its code comes from {code.co_filename}"
    if inspect.isclass(obj):
        for base in obj.__mro__[1:]:
            bmod = getattr(base, "__module__", "") or ""
            if bmod == f"minig3n.{module}":
                return f"it subclasses minig3n's {bmod}.{base.__qualname__}"
    return None


class Guard:
    """Flags golden-file reads and calls into minig3n's implementation of the module being graded."""

    _installed = False
    _active: "Guard | None" = None

    def __init__(self, allowed: dict[str, set[str]] | None = None, graded: dict[str, set[str]] | None = None):
        self.allowed = allowed or {}
        self.graded = graded or {}
        self.events: list[str] = []
        self._files: set[str] = set()
        self._ok: set[str] = set()
        if not Guard._installed:
            sys.addaudithook(Guard._audit)
            Guard._installed = True

    @staticmethod
    def _audit(event, args):
        g = Guard._active
        if g is None:
            return
        msg = None
        if event == "open" and args and not isinstance(args[0], int):
            path = args[0]
            try:
                p = Path(path.decode() if isinstance(path, bytes) else str(path)).resolve()
            except Exception:
                return
            if p.is_relative_to(GOLDENS):
                msg = f"opened the golden file {p.relative_to(REPO)}"
        elif event in ("sys.settrace", "sys.setprofile"):
            msg = f"replaced the grader's call hook ({event})"
        elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn"):
            msg = f"started another process ({event})"
        elif event == "sys._getframe" and Guard._bookkeeping_caller():
            return
        elif event in ("sys._getframe", "gc.get_objects", "gc.get_referrers", "gc.get_referents") or (
                event == "object.__getattr__" and len(args) > 1 and args[1] in FRAME_ATTRS):
            # the grader's frames hold the cases (inputs, goldens, expected outputs): no looking around
            msg = f"inspected the grader's frames or objects ({event}{' ' + args[1] if event.startswith('object') else ''})"
        if msg and msg not in g.events:
            g.events.append(msg)

    @staticmethod
    def _bookkeeping_caller() -> bool:
        """Is the code that called sys._getframe one of BOOKKEEPING_GETFRAME? (The look-up itself raises the
        same audit event, so the guard is switched off around it.)"""
        g, Guard._active = Guard._active, None
        try:
            code = sys._getframe(2).f_code       # 0 this, 1 _audit, 2 the code that called sys._getframe
        except ValueError:
            return False
        finally:
            Guard._active = g
        return any(code.co_filename.endswith("/" + f) and code.co_name == n for f, n in BOOKKEEPING_GETFRAME)

    def _trace(self, frame, event, arg):
        """Global trace function: called once per new Python frame; returns None (no line tracing)."""
        if event != "call":
            return None
        code = frame.f_code
        if code.co_filename not in self._files:
            return None
        top = code.co_qualname.split(".")[0]
        if top in self._ok or top.startswith("<"):
            return None
        msg = f"called minig3n's {code.co_qualname} (minig3n/{Path(code.co_filename).name})"
        if msg not in self.events:
            self.events.append(msg)
        return None

    class _Watch:
        def __init__(self, guard, module, importing):
            self.g, self.module, self.importing = guard, module, importing

        def __enter__(self):
            g = self.g
            g.events = []
            g._files = watched_files(self.module, tuple(sorted(g.graded.get(self.module, ()))))
            g._ok = set(g.allowed.get(self.module, ()))
            if not self.importing and g._files:
                sys.settrace(g._trace)
                threading.settrace(g._trace)   # threads the graded code starts are watched too
            Guard._active = g            # after our own settrace: the audit hook flags anyone else's
            return g

        def __exit__(self, *exc):
            Guard._active = None
            threading.settrace(None)
            sys.settrace(None)
            return False

    def watch(self, module: str, importing: bool = False):
        """Context manager: watch one graded call (or the import of the student's module)."""
        return Guard._Watch(self, module, importing)


@functools.lru_cache(maxsize=None)
def watched_files(module: str, graded: tuple = ()) -> frozenset:
    """The code files of minig3n's implementation of ``module``: ``minig3n/<module>.py`` and the files where
    its graded names are defined when the module re-exports them (``mobilenetv5.conv2d`` may live in
    ``minig3n/conv2d.py``). ``minig3n/ops.py`` is never watched: its helpers are allowed everywhere."""
    try:
        mod = importlib.import_module(f"minig3n.{module}")
    except ImportError:
        return frozenset()
    files = {mod.__file__}
    for name in graded:
        obj = getattr(mod, name, None)
        obj = inspect.unwrap(obj) if callable(obj) else obj
        try:
            f = inspect.getsourcefile(obj) if obj is not None else None
        except TypeError:
            f = None
        if f and Path(f).resolve().is_relative_to(MINIG3N) and Path(f).name != "ops.py":
            files.add(f)
    code_files = set()
    for f in files:   # co_filename is the path the module was imported from: match both spellings
        code_files |= {f, str(Path(f).resolve())}
    return frozenset(code_files)
