"""Atomic outputs: a file appears whole or not at all, and nothing else is left next to it, whatever
happens during the write: an exception, a full disk, a read-only disk, Ctrl-C, SIGTERM."""
import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minig3n.atomic import OutputError, atomic_output
from minig3n.checkpoint import load_safetensors, save_safetensors
from tests.conftest import REPO, WEIGHTS
from tests.reliability import assert_one_line_error, cli

pytestmark = pytest.mark.foundation

NANO = WEIGHTS / "nano-gemma3n"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_file_appears_whole(tmp_path):
    save_safetensors(tmp_path / "a.safetensors", {"x": np.arange(3, dtype=np.float32)})
    assert os.listdir(tmp_path) == ["a.safetensors"]
    assert load_safetensors(tmp_path / "a.safetensors")[0]["x"].tolist() == [0, 1, 2]


def test_temporary_names_are_unique_and_hidden(tmp_path):
    with atomic_output(tmp_path / "a.bin") as t1, atomic_output(tmp_path / "a.bin") as t2:
        assert t1 != t2 and t1.parent == tmp_path and t1.name.startswith(".a.bin.") and t1.name.endswith(".tmp")
        t1.write_bytes(b"1")
        t2.write_bytes(b"2")
    assert os.listdir(tmp_path) == ["a.bin"]


def test_exception_leaves_nothing_and_keeps_the_old_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old")
    with pytest.raises(ZeroDivisionError):
        with atomic_output(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"half")
            1 / 0
    assert os.listdir(tmp_path) == ["a.bin"] and (tmp_path / "a.bin").read_bytes() == b"old"


def test_directory_output(tmp_path):
    with atomic_output(tmp_path / "out", directory=True) as tmp:
        (tmp / "f").write_text("x")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == ["f"]
    with pytest.raises(OutputError, match="out: already exists"):
        with atomic_output(tmp_path / "out", directory=True):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "out2", directory=True) as tmp:
            (tmp / "f").write_text("x")
            raise RuntimeError
    assert os.listdir(tmp_path) == ["out"]


def _full_disk(monkeypatch):
    """Every write to a file minig3n.safetensors_io opens for writing fails as on a full disk."""
    import builtins

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            self.f.write(b[:1])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr("minig3n.safetensors_io.open", lambda p, mode="r": Full(builtins.open(p, mode)) if "w" in mode
                        else builtins.open(p, mode), raising=False)


def test_full_disk_trace(capsys, tmp_path, monkeypatch):
    _full_disk(monkeypatch)
    code, _, err = cli(capsys, "trace", "--model", NANO, "--ids", "2,5", "--out", tmp_path / "t.safetensors")
    assert_one_line_error(code, err, "trace", tmp_path / "t.safetensors", "No space left on device")
    assert os.listdir(tmp_path) == []


def test_read_only_disk_trace(capsys, tmp_path, monkeypatch):
    """Root ignores permission bits, so the read-only file system is simulated where the temporary file is
    created."""
    def rofs(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr("minig3n.atomic.tempfile.mkstemp", rofs)
    code, _, err = cli(capsys, "trace", "--model", NANO, "--ids", "2,5", "--out", tmp_path / "t.safetensors")
    assert_one_line_error(code, err, "trace", tmp_path / "t.safetensors", "Read-only file system")
    assert os.listdir(tmp_path) == []


def test_permission_denied(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr("minig3n.atomic.tempfile.mkstemp", denied)
    with pytest.raises(OutputError, match=r"cannot write .*a.safetensors: Permission denied"):
        save_safetensors(tmp_path / "a.safetensors", {"x": np.zeros(1, np.float32)})


SIGNAL_SNIPPET = textwrap.dedent("""
    import builtins, os, signal, sys
    import minig3n.safetensors_io as ck
    from minig3n.cli import main
    sig = getattr(signal, sys.argv[1])

    class Interrupted:                      # the first write of the trace file delivers the signal
        def __init__(self, f): self.f = f
        def write(self, b):
            self.f.write(b)
            os.kill(os.getpid(), sig)
        def __enter__(self): return self
        def __exit__(self, *a): self.f.close()

    ck.open = lambda p, mode="r": Interrupted(builtins.open(p, mode)) if "w" in mode else builtins.open(p, mode)
    sys.exit(main(["trace", "--model", sys.argv[2], "--ids", "2,5", "--out", sys.argv[3]]))
""")


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", -signal.SIGTERM)])
def test_signal_during_trace_write_leaves_nothing(tmp_path, sig, code):
    """Ctrl-C: 'interrupted', exit 130. SIGTERM: the process still dies of SIGTERM (as the sender asked),
    after the temporary file is removed."""
    out = tmp_path / "t.safetensors"
    r = subprocess.run([sys.executable, "-c", SIGNAL_SNIPPET, sig, str(NANO), str(out)], capture_output=True,
                       env=ENV, timeout=120)
    assert r.returncode == code, r.stderr.decode()
    assert os.listdir(tmp_path) == []
    assert b"Traceback" not in r.stderr


SLICE_SNIPPET = textwrap.dedent("""
    import os, signal, sys
    from minig3n import matformer
    from minig3n.cli import main
    real = matformer._write_shard

    def write_then_signal(path, entries, ckpt):     # the shard is written, then SIGTERM arrives
        n = real(path, entries, ckpt)
        os.kill(os.getpid(), signal.SIGTERM)
        return n

    matformer._write_shard = write_then_signal
    sys.exit(main(["slice", "--model", sys.argv[1], "--out", sys.argv[2], "--skip-layers", "3"]))
""")


def test_sigterm_during_slice_leaves_no_partial_directory(tmp_path):
    from tests.conftest import TINY
    r = subprocess.run([sys.executable, "-c", SLICE_SNIPPET, str(TINY), str(tmp_path / "cut")], capture_output=True,
                       env=ENV, timeout=120)
    assert r.returncode == -signal.SIGTERM, r.stderr.decode()
    assert os.listdir(tmp_path) == []                      # no "cut", no ".cut.*.partial"


def test_slice_on_a_read_only_disk(capsys, tmp_path, monkeypatch):
    from tests.conftest import TINY

    def rofs(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr("minig3n.atomic.tempfile.mkdtemp", rofs)
    code, _, err = cli(capsys, "slice", "--model", TINY, "--out", tmp_path / "cut", "--skip-layers", "3")
    assert_one_line_error(code, err, "slice", tmp_path / "cut", "Read-only file system")
    assert os.listdir(tmp_path) == []


def test_slice_on_a_full_disk(capsys, tmp_path, monkeypatch):
    from tests.conftest import TINY
    _full_disk(monkeypatch)
    code, _, err = cli(capsys, "slice", "--model", TINY, "--out", tmp_path / "cut", "--skip-layers", "3")
    assert_one_line_error(code, err, "slice", f"cannot write {tmp_path / 'cut' / 'model.safetensors'}: "
                          "No space left on device")
    assert os.listdir(tmp_path) == []
