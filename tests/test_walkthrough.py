"""The walkthrough chapters run, and the classroom-assignment switch grades a student's code (NumPy tier).

How the chapters are executed: each ``walkthrough/NN_*.ipynb`` is read as JSON and its code cells are run in
order with plain ``exec`` in one fresh namespace per chapter, with the working directory set to
``walkthrough/`` (where Jupyter would start the kernel). No Jupyter kernel, nbclient or nbval is needed, so
the test extra stays light; the price is that IPython syntax cannot run, so a cell using a magic
(``%time``, ``!pip``) is rejected rather than half-supported. Any exception (a failed ``assert`` comparing
minig3n with the reference's golden outputs, above all) fails the chapter's test. Outputs are not compared:
the chapters are committed without outputs, and they assert what matters.

The assignment switch (``MINIG3N_STUDENT``) and the grader are tested in tests/test_grader_seam.py and
tests/test_grader.py.
"""
import json
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
