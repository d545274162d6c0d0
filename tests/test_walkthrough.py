"""The walkthrough chapters run, and the classroom-assignment switch grades a student's code (NumPy tier).

How the chapters are executed: each ``walkthrough/NN_*.ipynb`` is read as JSON and its code cells are run in
order with plain ``exec`` in one fresh namespace per chapter, with the working directory set to
``walkthrough/`` (where Jupyter would start the kernel). No Jupyter kernel, nbclient or nbval is needed, so
the test extra stays light; the price is that IPython syntax cannot run, so a cell using a magic
(``%time``, ``!pip``) is rejected rather than half-supported. Any exception (a failed ``assert`` comparing
minig3n with the reference's golden outputs, above all) fails the chapter's test. Outputs are not compared:
the chapters are committed without outputs, and they assert what matters.

How the assignment switch is proven: ``tests/adapters/_impl.py`` resolves ``impl("laurel").laurel`` to the
function in ``$MINIG3N_STUDENT/laurel.py`` when that file defines it. A golden test run in a subprocess with
the variable pointing at a deliberately wrong implementation must fail, and pass with a correct one.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.adapters import _impl

pytestmark = pytest.mark.walkthrough

REPO = Path(__file__).resolve().parent.parent
WALK = REPO / "walkthrough"
CHAPTERS = sorted(WALK.glob("[0-9][0-9]_*.ipynb"))
MAGIC = re.compile(r"^\s*(%|!)", re.M)


def _code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4, f"{path.name}: nbformat {nb['nbformat']}, expected 4"
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        assert not MAGIC.search(src), f"{path.name}: IPython magic or shell escape in a cell:\n{src}"
        assert not cell.get("outputs"), f"{path.name}: commit chapters without outputs (python walkthrough/_build.py)"
        cells.append(src)
    return cells


def test_chapters_present_and_built_from_source():
    """At least chapters 01-10, and every committed .ipynb equals what walkthrough/_build.py writes."""
    numbers = {p.name[:2] for p in CHAPTERS}
    assert {f"{i:02d}" for i in range(1, 11)} <= numbers, sorted(numbers)
    r = subprocess.run([sys.executable, str(WALK / "_build.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs(path, monkeypatch, capsys):
    monkeypatch.chdir(WALK)
    monkeypatch.delenv(_impl.ENV, raising=False)   # chapters demonstrate minig3n, whatever the grader is set to
    namespace = {"__name__": "__main__"}
    t0 = time.perf_counter()
    for i, src in enumerate(_code_cells(path)):
        try:
            exec(compile(src, f"{path.name}[code cell {i}]", "exec"), namespace)
        except Exception as e:
            out = capsys.readouterr().out
            raise AssertionError(f"{path.name}, code cell {i} raised {type(e).__name__}: {e}\n--- cell ---\n{src}\n"
                                 f"--- output so far ---\n{out[-3000:]}") from e
    seconds = time.perf_counter() - t0
    assert seconds < 10, f"{path.name} took {seconds:.1f} s; keep a chapter under 5 s"


# The assignment mechanism -----------------------------------------------------------------------------------
WRONG_LAUREL = '''
"""A plausible mistake: the Gemma 2/3 habit of (1 + w) in the norm."""
from minig3n.ops import linear, rms_norm


def laurel(x, p, eps=1e-6):
    up = linear(linear(x, p["linear_left.weight"]), p["linear_right.weight"])
    return x + rms_norm(up, 1.0 + p["post_laurel_norm.weight"], eps)
'''

RIGHT_LAUREL = '''
"""A correct 'implementation': minig3n's own function, re-exported."""
from minig3n.laurel import laurel  # noqa: F401
'''

OWN_LAUREL = '''
import numpy as np


def laurel(x, p, eps=1e-6):
    low = x @ p["linear_left.weight"].astype(x.dtype).T
    up = low @ p["linear_right.weight"].astype(x.dtype).T
    ms = np.mean(up * up, axis=-1, keepdims=True)
    return x + up * (ms + x.dtype.type(eps)) ** x.dtype.type(-0.5) * p["post_laurel_norm.weight"].astype(x.dtype)
'''


def _graded(student_dir, node="tests/test_text_modules.py::test_laurel_golden"):
    env = {**os.environ, _impl.ENV: str(student_dir)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                          cwd=REPO, env=env, capture_output=True, text=True)


def test_wrong_student_laurel_fails_the_golden_test(tmp_path):
    (tmp_path / "laurel.py").write_text(WRONG_LAUREL)
    r = _graded(tmp_path)
    assert r.returncode != 0, r.stdout
    assert "1 failed" in r.stdout and "rel err" in r.stdout, r.stdout


def test_correct_student_laurel_passes(tmp_path):
    (tmp_path / "laurel.py").write_text(RIGHT_LAUREL)
    r = _graded(tmp_path)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr


def test_resolution_rules(tmp_path, monkeypatch):
    """Per function: the student's definition when the file defines it, minig3n's otherwise; no variable, no
    change; a file that does not import is an error, as is a variable naming no directory."""
    import minig3n.altup
    import minig3n.laurel

    monkeypatch.delenv(_impl.ENV, raising=False)
    assert _impl.impl("laurel").laurel is minig3n.laurel.laurel
    monkeypatch.setenv(_impl.ENV, str(tmp_path))
    assert _impl.impl("laurel").laurel is minig3n.laurel.laurel                 # no laurel.py yet
    (tmp_path / "altup.py").write_text("def predict(streams, p, cfg):\n    return 'student'\n")
    assert _impl.impl("altup").predict(None, None, None) == "student"
    assert _impl.impl("altup").correct is minig3n.altup.correct                 # not defined there: minig3n's
    assert _impl.source_of("altup", "predict") == "student" and _impl.source_of("altup", "correct") == "minig3n"
    (tmp_path / "laurel.py").write_text("from .ops import rms_norm\n")           # relative import: not a package
    with pytest.raises(_impl.StudentImportError, match="absolute imports"):
        _impl.impl("laurel").laurel
    monkeypatch.setenv(_impl.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(_impl.StudentImportError, match="not a directory"):
        _impl.impl("laurel").laurel


def test_student_own_numpy_laurel_is_graded_in_process(tmp_path, monkeypatch):
    """An independent NumPy implementation written by a 'student' agrees with the golden in both dtypes
    (through the text adapter, i.e. the very call the golden tests make)."""
    import numpy as np

    from tests.adapters import text as A
    from tests.golden_io import load_golden, rel_err

    (tmp_path / "laurel.py").write_text(OWN_LAUREL)
    monkeypatch.setenv(_impl.ENV, str(tmp_path))
    assert _impl.source_of("laurel", "laurel") == "student"
    g = load_golden("text_laurel")
    cfg = A.text_config(g.meta["config"])
    for dt, want, tol in ((np.float32, g.out32, 1e-5), (np.float64, g.out64, 1e-10)):
        assert rel_err(A.run_laurel(g.inputs["x"].astype(dt), g.weights, cfg), want["out"]) <= tol


def _make_stub():
    import importlib.util
    spec = importlib.util.spec_from_file_location("walkthrough_make_stub", WALK / "make_stub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ASSIGNED_MODULES = ["ple", "altup", "laurel", "attention", "kv_share", "mlp", "decoder", "sampling", "chat",
                    "kv_cache", "generate", "tokenizer", "features", "usm", "embedder", "audio_io", "matformer"]


def test_stubs_import_and_raise_not_implemented(tmp_path, monkeypatch):
    """walkthrough/make_stub.py writes an importable file for every module ASSIGNMENTS.md assigns; graded
    through the adapter, a fresh laurel stub raises NotImplementedError (the tests grade the stub, not
    minig3n)."""
    import numpy as np

    from tests.adapters import text as A
    from tests.golden_io import load_golden

    make_stub = _make_stub()
    for module in ASSIGNED_MODULES:
        assert make_stub.main([module, str(tmp_path)]) == 0
        assert (tmp_path / f"{module}.py").is_file()
    assert make_stub.main(["laurel", str(tmp_path)]) == 1            # never overwrites
    monkeypatch.setenv(_impl.ENV, str(tmp_path))
    for module in ASSIGNED_MODULES:
        _impl.student_module(module)                                  # imports cleanly
    g = load_golden("text_laurel")
    with pytest.raises(NotImplementedError):
        A.run_laurel(g.inputs["x"].astype(np.float32), g.weights, A.text_config(g.meta["config"]))
    text = (tmp_path / "attention.py").read_text()
    assert "def apply_rope(x, cos, sin):" in text and "from minig3n.ops import linear, rms_norm" in text


@pytest.mark.parametrize("adapter, module, source, call, want", [
    ("text", "kv_share", "def kv_sharing_modes(cfg):\n    return 'student'\n",
     lambda A: A.run_kv_sharing_modes(None), "student"),
    ("text", "mlp", "def std_multiplier(s):\n    return 'student'\n", lambda A: A.run_std_multiplier(0.95), "student"),
    ("audio", "usm", "def q_scale(head_dim):\n    return 'student'\n", lambda A: A.run_q_scale(192), "student"),
    ("generation", "chat", "def render_chat(messages, add_generation_prompt=True):\n    return 'student'\n",
     lambda A: A.run_render_chat([]), "student"),
    ("matformer", "matformer",
     "from types import SimpleNamespace\n\n\ndef find_published(name):\n"
     "    return SimpleNamespace(ffn_dims=[1], skip_layers=[2])\n",
     lambda A: A.run_published_spec("E2B"), ([1], [2])),
])
def test_every_switched_adapter_calls_the_student(tmp_path, monkeypatch, adapter, module, source, call, want):
    """Each adapter that uses the switch (text, audio, generation, matformer) hands the call to the student's
    function when the student's file defines it."""
    import importlib
    A = importlib.import_module(f"tests.adapters.{adapter}")
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.setenv(_impl.ENV, str(tmp_path))
    assert call(A) == want
