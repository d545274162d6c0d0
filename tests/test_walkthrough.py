"""The walkthrough chapters are current and execute in a Jupyter kernel; the classroom-assignment switch grades
a student's code (NumPy tier).

The chapters are committed *with* outputs (walkthrough/_build.py --execute). Default run (marker
``walkthrough``, no Jupyter needed): every committed chapter's cells equal ``_chapters.py`` and the hash of
its cells and of every repository file it imported equals the one stored when it was executed (so its
outputs are those of the current code), each has at least one figure, no error output, no execution
timestamps and no memory addresses in its outputs, and the PNGs carry no metadata chunk; and its markdown
has the teaching parts (typeset maths, a linked source, things to poke at, questions with folded answers,
a graded exercise).

Marker ``notebooks`` (deselected by default; ``pytest -m notebooks`` with the ``walkthrough`` extra, a
step of .ci/run): each chapter runs in a fresh python3 kernel through nbclient, started in the
*repository root* (not walkthrough/, so the setup cell's search for the root is exercised), and must raise
nothing and display at least one PNG figure.

How the assignment switch is proven: ``tests/adapters/_impl.py`` resolves ``impl("laurel").laurel`` to the
function in ``$MINIG3N_STUDENT/laurel.py`` when that file defines it. A golden test run in a subprocess with
the variable pointing at a deliberately wrong implementation must fail, and pass with a correct one.
"""
import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adapters import _impl

pytestmark = pytest.mark.walkthrough

REPO = Path(__file__).resolve().parent.parent
WALK = REPO / "walkthrough"
CHAPTERS = sorted(WALK.glob("[0-9][0-9]_*.ipynb"))
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]{6,}")
MAX_TOTAL_BYTES = 6 << 20          # all chapters with their figures: "a few MB"


def _nb(path: Path) -> dict:
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4, f"{path.name}: nbformat {nb['nbformat']}, expected 4"
    return nb


def _pngs(nb: dict) -> list[bytes]:
    return [base64.b64decode(o["data"]["image/png"]) for c in nb["cells"] if c["cell_type"] == "code"
            for o in c.get("outputs", []) if "image/png" in o.get("data", {})]


def test_chapters_present_and_current():
    """Chapters 00-12, each built from _chapters.py and executed on the current code (_build.py --check)."""
    numbers = {p.name[:2] for p in CHAPTERS}
    assert {f"{i:02d}" for i in range(0, 13)} <= numbers, sorted(numbers)
    r = subprocess.run([sys.executable, str(WALK / "_build.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_committed_outputs_are_clean(path):
    """Figures present, no errors, nothing that changes from one execution to the next."""
    nb = _nb(path)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), f"{path.name}: execution counts"
    for c in nb["cells"]:
        assert "execution" not in c.get("metadata", {}), f"{path.name}: execution timestamps in a cell"
        for o in c.get("outputs", []):
            assert o["output_type"] != "error", f"{path.name}: an error output: {o.get('evalue')}"
            text = "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
            assert not ADDRESS.search(text), f"{path.name}: a memory address in an output: {text[:200]}"
    pngs = _pngs(nb)
    assert pngs, f"{path.name}: no figure"
    for png in pngs:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"tEXt" not in png and b"tIME" not in png, f"{path.name}: PNG metadata (use show(fig))"


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_has_the_teaching_parts(path):
    """Typeset maths, a linked source, things to poke at, questions with folded answers; a graded exercise
    pointing at ASSIGNMENTS.md (the overview, 00, has none); no citation of files outside the repository."""
    text = "\n".join("".join(c["source"]) for c in _nb(path)["cells"] if c["cell_type"] == "markdown")
    assert "$" in text, f"{path.name}: no typeset maths"
    assert re.search(r"\]\(https?://", text), f"{path.name}: no linked source"
    assert "## Things to poke at" in text, f"{path.name}: no 'Things to poke at'"
    assert "## Questions" in text and "<details><summary>Answer</summary>" in text, f"{path.name}: no questions"
    if not path.name.startswith("00_"):
        assert "## Exercise" in text and "ASSIGNMENTS.md" in text, f"{path.name}: no graded exercise"
    assert "../shared" not in text and "gemma3n_numerics.md" not in text, f"{path.name}: cites ../shared"


def test_walkthrough_is_small():
    total = sum(p.stat().st_size for p in WALK.rglob("*") if p.is_file())
    assert total <= MAX_TOTAL_BYTES, f"walkthrough/ holds {total / 2**20:.1f} MiB (limit {MAX_TOTAL_BYTES >> 20})"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_executes_in_a_kernel(path, monkeypatch):
    """A real python3 kernel (nbclient), started in the repository root; no cell may raise."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.delenv(_impl.ENV, raising=False)   # chapters demonstrate minig3n, whatever the grader is set to
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    except CellExecutionError as e:
        raise AssertionError(f"{path.name}: {str(e)[-3000:]}") from None
    assert _pngs(json.loads(nbformat.writes(nb))), f"{path.name}: no figure displayed"


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
