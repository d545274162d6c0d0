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

The assignment switch (``MINIG3N_STUDENT``) and the grader are tested in tests/test_grader_seam.py and
tests/test_grader.py.
"""
import base64
import json
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
