"""Atomic outputs: a file or directory appears whole under its name, or not at all.

The idea: write to a unique temporary name next to the target (same directory, so the final rename stays on
one file system and is atomic), rename it to the target at the end, and remove it on any failure: an
exception, a full disk, Ctrl-C (KeyboardInterrupt) or SIGTERM (turned into an exception while the write
runs, so the clean-up code gets to run). Every writer in minig3n (``trace --out``, ``slice``'s output
directory, ``save_safetensors``) goes through ``atomic_output``::

    with atomic_output("ours.safetensors") as tmp:      # tmp: ".ours.safetensors.k3j2x1.tmp" next to it
        write_everything_to(tmp)
    # now "ours.safetensors" exists, complete; on error nothing new is left on disk

Errors of the file system (read-only disk, no space, permission) become one ``OutputError`` naming the
target and the reason. A directory target replaces nothing: it must not exist yet (a file target is replaced,
as ``os.replace`` does).
Left out: fsync before the rename (a power cut can still leave an empty file on some file systems).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from .errors import Minig3nError


class OutputError(Minig3nError):
    """An output could not be written (read-only or full disk, no permission, a directory in the way)."""


class _Terminated(BaseException):
    """SIGTERM arrived during an atomic write (a BaseException, so ``except Exception`` does not swallow it)."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _catch_sigterm() -> bool:
    """Make SIGTERM raise ``_Terminated`` (main thread, default action only); True if installed."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def _describe(e: OSError) -> str:
    return e.strerror or str(e)


@contextlib.contextmanager
def atomic_output(target, directory: bool = False):
    """Yield a fresh temporary path next to ``target`` (an empty directory if ``directory``); rename it to
    ``target`` when the block ends normally, remove it whatever else happens."""
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir() and not directory:
        raise OutputError(f"{target}: is a directory; give a file name for the output")
    if directory and target.exists():
        raise OutputError(f"{target}: already exists; give a new directory name for the output")
    if not parent.is_dir():
        raise OutputError(f"{target}: directory {parent} does not exist")
    prefix = f".{target.name}."
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        raise OutputError(f"cannot write {target}: {_describe(e)}") from None
    done = False
    caught = _catch_sigterm()
    try:
        try:
            yield tmp
            if directory and target.exists():
                raise OutputError(f"{target}: appeared while it was being written; output left unwritten")
            os.replace(tmp, target)
            done = True
        except OSError as e:
            raise OutputError(f"cannot write {target}: {_describe(e)}") from None
    except OutputError as e:             # a file written inside a temporary directory: name its final place
        raise OutputError(str(e).replace(str(tmp), str(target))) from None
    except _Terminated:
        _remove(tmp)
        if caught:                       # clean-up done: now die of SIGTERM, as the sender asked
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        if caught:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if not done:
            _remove(tmp)


def _remove(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            tmp.unlink()
