"""Helpers for the reliability tests (tests/test_reliability_*.py): run a command line in-process and check
the one-line error contract, and clone a checkpoint directory with one file changed."""
import json
import os
import shutil
from pathlib import Path

from minig3n.cli import main


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``minig3n ARGV`` in-process; an uncaught exception (a traceback) fails the calling test."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, command, *culprits):
    """Exit 2 and one stderr line ``minig3n COMMAND: error: ...`` that names every culprit given. Progress
    notices (``minig3n generate: loading DIR ...`` and ``... done in 1.2 s``, printed when loading takes over a
    second, as it can on a busy machine or while numba compiles its kernels) are not error lines and are skipped."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.endswith(" ...") and not _is_done_notice(ln)]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"minig3n {command}: error: "), err
    for c in culprits:
        assert str(c) in lines[0], (c, lines[0])
    assert "Traceback" not in err and "object at 0x" not in err, err
    return lines[0]


def _is_done_notice(line: str) -> bool:
    """``minig3n generate: loading DIR done in 1.2 s``: the end of a progress notice."""
    head, _, tail = line.rpartition(" done in ")
    return bool(head) and tail.endswith(" s") and ": error: " not in head


def clone(src: Path, dst: Path, config=None, **files) -> Path:
    """``dst`` with every file of checkpoint ``src`` symlinked, except: ``config`` (a dict patched into
    config.json, or a function dict -> anything JSON, or raw bytes) and ``files`` (name -> bytes)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "config.json" and f.name not in files:
            os.symlink(f.resolve(), dst / f.name)
    d = json.loads((src / "config.json").read_text())
    if isinstance(config, bytes):
        (dst / "config.json").write_bytes(config)
    elif callable(config):
        (dst / "config.json").write_text(json.dumps(config(d)))
    else:
        (dst / "config.json").write_text(json.dumps({**d, **(config or {})}))
    for name, data in files.items():
        if data is None:
            continue
        (dst / name).write_bytes(data)
    return dst


def leftovers(d: Path, expected) -> list[str]:
    """Names in ``d`` that are not in ``expected`` (temporary files a failed write left behind)."""
    return sorted(set(os.listdir(d)) - set(expected))


__all__ = ["cli", "assert_one_line_error", "clone", "leftovers", "shutil"]
