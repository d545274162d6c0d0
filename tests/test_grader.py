"""The grader grades (NumPy tier): green means graded.

One batch run of ``python -m tests.grade`` on a class of "students" (tests/grading/fixtures/students.py and
mistakes.py), shared by every test here:

* ``correct``: independent implementations of every graded function (fixtures/correct/) -> full marks;
* ``stub`` (make_stub's NotImplementedError stubs), ``reexport`` (``from minig3n.x import f``), ``wrapper``
  (thin wrappers around minig3n's function / class), ``golden`` (reads the golden files) -> 0 points, and
  the status names the reason, for **every** row of tests/grading/points.csv;
* ``golden_copy``: LAuReL returning the golden output pasted into the file -> the golden cases pass, the
  random ones fail: half marks, never "pass";
* one student per known mistake (tests/grading/hints.py): the feedback shows the hint, and the error of
  each golden case equals the signature recorded in the hint table (within its factor).
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.grading import hints as hints_mod
from tests.grading import points as points_mod
from tests.grading.fixtures import mistakes, students

pytestmark = pytest.mark.walkthrough

REPO = Path(__file__).resolve().parent.parent
SEED = 20261201
ROWS = points_mod.load()
EXPECTED = {"stub": "not implemented", "reexport": "not your code", "wrapper": "not your code",
            "golden": "not your code"}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """{student: report} of one ``python -m tests.grade`` run over the whole fixture class."""
    class_dir = tmp_path_factory.mktemp("class")
    for kind in students.KINDS:
        students.write(kind, class_dir / kind)
    for key in mistakes.MISTAKES:
        mistakes.write(key, class_dir / f"mistake_{key}")
    out = class_dir / "grades.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "tests.grade", str(class_dir), "--out", str(out), "--seed", str(SEED),
                        "--jobs", "2", "--timeout", "300"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    reports = {d.name: json.loads((d / "grade.json").read_text()) for d in class_dir.iterdir() if d.is_dir()}
    return {"dir": class_dir, "csv": out, "stdout": r.stdout, "reports": reports}


def _results(report, function=None, check=None):
    return [x for x in report["results"] if (function is None or x["function"] == function)
            and (check is None or x["check"] == check)]


def test_correct_student_gets_full_marks_in_both_dtypes(graded):
    rep = graded["reports"]["correct"]
    bad = [(x["check"], x["dtype"], x["status"], x.get("detail"), [o for o in x["outputs"] if not o.get("ok")][:1])
           for x in rep["results"] if x["status"] != "pass"]
    assert not bad, bad
    assert rep["scores"]["total"] == rep["scores"]["max_total"] == 2 * sum(r.points for r in ROWS)
    for concept, v in rep["scores"]["concepts"].items():
        assert v["float32"] == v["float64"] == v["max"] > 0, concept


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.concept}-{r.check}")
def test_every_graded_function_refuses_stubs_and_cheats(graded, row):
    """For this row: the stub is not implemented, a re-export / wrapper / golden reader is not the student's
    code, in every dtype, for 0 points; the independent implementation passes."""
    for kind, status in EXPECTED.items():
        res = _results(graded["reports"][kind], check=row.check)
        assert res and all(x["status"] == status for x in res), (kind, [(x["status"], x.get("detail")) for x in res])
        assert all(x["fraction"] == 0 for x in res)
    res = _results(graded["reports"]["correct"], check=row.check)
    assert res and all(x["status"] == "pass" for x in res)
    for kind in EXPECTED:
        assert graded["reports"][kind]["scores"]["total"] == 0


def test_cheat_details_name_the_cause(graded):
    r = graded["reports"]
    assert "re-exported" in _results(r["reexport"], "laurel")[0]["detail"]
    assert "called minig3n's laurel (minig3n/laurel.py)" in _results(r["wrapper"], "laurel")[0]["detail"]
    assert "opened the golden file tests/goldens/text_laurel.safetensors" in _results(r["golden"], "laurel")[0]["detail"]
    assert "NotImplementedError" in _results(r["stub"], "laurel")[0]["detail"]
    # a wrapper *class* delegating to minig3n's KVCache is caught at call time too
    assert "KVCache.empty" in _results(r["wrapper"], "KVCache")[0]["detail"]


def test_tampering_with_the_guard_is_caught(graded):
    rep = graded["reports"]["tamper"]
    laurel, mlp = _results(rep, "laurel"), _results(rep, "mlp")
    assert [x["status"] for x in laurel + mlp] == ["not your code"] * 4
    assert "replaced the grader's call hook (sys.settrace)" in laurel[0]["detail"]
    assert "called minig3n's mlp (minig3n/mlp.py)" in mlp[0]["detail"]
    ids = _results(rep, "ple_ids")
    assert [x["status"] for x in ids] == ["not your code"]
    assert "inspected the grader's frames or objects (sys._getframe)" in ids[0]["detail"]
    sco = _results(rep, "scale_corrected_output")
    assert [x["status"] for x in sco] == ["not your code"] * 2
    assert "replaced the grader's or NumPy's" in sco[0]["detail"] and ".compare" in sco[0]["detail"]
    assert rep["scores"]["total"] == 0


def test_pasted_golden_output_fails_the_random_cases(graded):
    rep = graded["reports"]["golden_copy"]
    res = _results(rep, "laurel")
    assert [x["status"] for x in res] == ["fail", "fail"]
    for x in res:
        oks = {o["case"].split(":")[0]: o["ok"] for o in x["outputs"]}
        assert oks == {"golden": True, "random": False}
        assert x["fraction"] == 0.5
    assert rep["scores"]["concepts"]["laurel"] == {"float32": 5.0, "float64": 5.0, "max": 10.0}
    assert all(x["status"] == "missing" for x in rep["results"] if x["function"] != "laurel")


@pytest.mark.parametrize("hint", hints_mod.HINTS, ids=lambda h: h.key)
def test_known_mistake_gets_its_hint_and_matches_its_signature(graded, hint):
    rep = graded["reports"][f"mistake_{hint.key}"]
    failing = {(x["function"], o["case"], o["output"], x["dtype"]): o for x in rep["results"] for o in x["outputs"]
               if not o.get("ok") and "err" in o}
    for fn, case, out, dt, want in hint.signature:
        hits = [o for (f, c, oo, d), o in failing.items() if (f, c, oo) == (fn, case, out) and (dt is None or d == dt)]
        assert hits, (fn, case, out, dt, sorted(failing))
        for o in hits:
            assert abs(np.log(o["err"] / want)) <= np.log(hints_mod.FACTOR), (fn, case, o["err"], want)
            assert o["hint"] == hint.text
    feedback = (graded["dir"] / f"mistake_{hint.key}" / "FEEDBACK.md").read_text()
    assert f"**hint:** {hint.text}" in feedback
    # and no other hint fires on this mistake
    others = {o.get("hint") for o in failing.values()} - {None, hint.text}
    assert not others, others


def test_random_cases_never_carry_a_hint(graded):
    for rep in graded["reports"].values():
        for x in rep["results"]:
            for o in x["outputs"]:
                if o["case"].startswith("random"):
                    assert not o.get("hint")


def test_gradebook_csv_and_feedback_files(graded):
    with open(graded["csv"], newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(graded["reports"])
    concepts = points_mod.concepts(ROWS)
    for c in concepts:
        assert f"{c}_float32" in rows["correct"] and f"{c}_float64" in rows["correct"]
    assert float(rows["correct"]["total"]) == float(rows["correct"]["max_total"]) == 2 * sum(r.points for r in ROWS)
    assert float(rows["golden_copy"]["laurel_float32"]) == 5.0
    assert all(float(rows[k]["total"]) == 0 for k in EXPECTED)
    fb = (graded["dir"] / "mistake_laurel_one_plus_w" / "FEEDBACK.md").read_text()
    assert "`laurel.laurel` [laurel, float64]: **fail**, 0 / 10" in fb
    assert "golden:text_laurel, output `out`: max relative error 0.529 > tolerance 1e-05 at index (" in fb
    assert f"seed of the random cases: {SEED}" in fb
    n = len(graded["reports"])
    assert "[grade] wrote" in graded["stdout"] and f"{n}/{n}" in graded["stdout"]


def test_a_hanging_student_is_cut_off_and_reported(tmp_path):
    from tests.grade import grade_one
    d = tmp_path / "sleepy"
    d.mkdir()
    (d / "laurel.py").write_text("while True:\n    pass\n")
    rep = grade_one(d, d, seed=1, timeout=3, only="laurel")
    assert rep["status"].startswith("timed out after 3 s")
    assert rep["scores"]["total"] == 0 and rep["scores"]["max_total"] == 20
    assert "Not graded: timed out" in (d / "FEEDBACK.md").read_text()


def test_student_folder_is_a_package_of_its_own(tmp_path):
    """Both import styles work between a student's files, in a subprocess (the loader edits sys.path)."""
    (tmp_path / "laurel.py").write_text("def helper():\n    return 41\n")
    (tmp_path / "mlp.py").write_text("from laurel import helper\nfrom .laurel import helper as h2\n\n\n"
                                     "def mlp(x, p, s=0.0):\n    return helper() + h2() - 41 + 1\n")
    code = ("from tests.grading.student import import_module\n"
            f"m = import_module({str(tmp_path)!r}, 'mlp')\n"
            "print(m.__name__, m.mlp(None, None))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True)
    assert r.stdout.split() == ["minig3n_student.mlp", "42"], r.stderr


def test_points_table_errors_name_the_row(tmp_path):
    bad = tmp_path / "points.csv"
    bad.write_text("concept,step,module,function,check,points\nlaurel,1,laurel,laurel,laurel,ten\n")
    with pytest.raises(SystemExit, match=r"points.csv:2: bad row"):
        points_mod.load(bad)
    bad.write_text("concept,step,module,function,check,points\nlaurel,1,laurel,laurel,no_such_check,1\n")
    with pytest.raises(SystemExit, match=r"unknown check\(s\) \['no_such_check'\]"):
        points_mod.load(bad)


def test_grade_cli_errors(tmp_path):
    from tests.grade import main
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "g.csv")]) == 2
    assert main([str(tmp_path), "--out", str(tmp_path / "g.csv")]) == 2       # no student folders
    assert main([]) == 2
    assert main([str(tmp_path), "--out", str(tmp_path / "g.csv"), "--only", "laurel,lora"]) == 2



def test_a_function_that_never_returns_is_cut_off_per_check(tmp_path):
    """One endless function costs its own check (a per-check alarm), not the student's other points."""
    (tmp_path / "laurel.py").write_text("def laurel(x, p, eps=1e-6):\n    while True:\n        pass\n")
    js = tmp_path / "g.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MINIG3N_GRADE_CHECK_TIMEOUT": "1"}
    r = subprocess.run([sys.executable, "-m", "tests.grading.engine", str(tmp_path), "--only", "laurel", "--quiet",
                        "--json", str(js), "--seed", "1"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(js.read_text())["results"]
    assert [x["status"] for x in res] == ["error", "error"]
    assert all("took longer than 1 s" in x["detail"] for x in res)


def test_correct_student_graded_alone_on_one_concept_gets_full_marks(tmp_path):
    """``--only mobilenetv5`` in a fresh process: the correct fixture's import pulls in namedtuple/typing, which
    call sys._getframe for their own module bookkeeping; that must not count as reaching the grader's frames
    (it once scored same_padding 'not your code', 36 of 38)."""
    from tests.grade import grade_one
    d = tmp_path / "alice"
    students.write("correct", d)
    rep = grade_one(d, d, seed=1, timeout=300, only="mobilenetv5")
    assert rep["scores"]["total"] == rep["scores"]["max_total"] == 38, rep["status"]
    assert "**not your code**" not in (d / "FEEDBACK.md").read_text()
