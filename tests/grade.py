"""Grade a class: one sub-folder per student -> a CSV gradebook and a FEEDBACK.md per student.

    python -m tests.grade CLASS_DIR --out grades.csv                 # every student, every concept
    python -m tests.grade CLASS_DIR --out grades.csv --only laurel,mlp --timeout 300 --seed 1234
    python -m tests.grade --student ~/my_g3n                         # one folder: print its feedback

Each student folder holds their modules (``laurel.py``, ``mlp.py``, ...: walkthrough/ASSIGNMENTS.md). Each
student is graded in a process of their own (``python -m tests.grading.engine``), with a timeout, so a
crash, an endless loop or a ``sys.exit`` in one student's code costs only that student's row.

Outputs:
* the CSV (``--out``): one row per student: ``student, status, total, max_total, <concept>_float32,
  <concept>_float64`` for every concept of tests/grading/points.csv, and ``seconds``;
* ``<feedback-dir>/<student>/FEEDBACK.md`` (default: inside each student's folder): per function and dtype,
  the status, the points, and for every failing output the case, the max error, where (worst index), the
  tolerance, and a hint when the error matches a known mistake (tests/grading/hints.py);
* ``<feedback-dir>/<student>/grade.json``: the full report.

The points and concepts are in tests/grading/points.csv (a teacher edits that table). The random cases
use ``--seed`` (default: fresh entropy, printed and written to each feedback file, so a run can be
repeated exactly).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.grading import points as points_mod
from tests.grading.feedback import feedback_markdown

REPO = Path(__file__).resolve().parent.parent


def students_in(class_dir: Path) -> list[Path]:
    return sorted(d for d in class_dir.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))
                  and any(d.glob("*.py")))


def grade_one(folder: Path, out_dir: Path, seed: int, timeout: float, only: str) -> dict:
    """Run the engine on one folder in a subprocess; return its report (or a report of the failure)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "grade.json"
    js.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "tests.grading.engine", str(folder), "--seed", str(seed), "--json", str(js),
           "--quiet"] + (["--only", only] if only else [])
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        problem = None if r.returncode == 0 and js.is_file() else \
            f"the grader's process exited with {r.returncode}: {(r.stderr or r.stdout).strip().splitlines()[-1:] or ''}"
    except subprocess.TimeoutExpired:
        problem = f"timed out after {timeout:g} s (an endless loop, or far too slow)"
    if problem is None:
        report = json.loads(js.read_text())
        report["status"] = "graded"
    else:
        rows = [r for r in points_mod.load() if not only or r.concept in only.split(",")]
        report = {"student": folder.name, "folder": str(folder), "seed": seed, "seconds": round(time.time() - t0, 2),
                  "status": problem, "results": [],
                  "scores": {"concepts": {c: {"float32": 0.0, "float64": 0.0,
                                              "max": sum(r.points for r in rows if r.concept == c)}
                                          for c in points_mod.concepts(rows)}, "total": 0.0,
                             "max_total": 2 * sum(r.points for r in rows)}}
        js.write_text(json.dumps(report, indent=1))
    text = feedback_markdown(report)
    if report["status"] != "graded":
        text = text.replace("\n\n", f"\n\n**Not graded: {report['status']}.**\n\n", 1)
    (out_dir / "FEEDBACK.md").write_text(text, encoding="utf-8")
    return report


def write_csv(path: Path, reports: list[dict], concepts: list[str]) -> None:
    cols = ["student", "status", "total", "max_total"] + [f"{c}_{d}" for c in concepts for d in ("float32", "float64")] \
        + ["seconds"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in reports:
            sc = r["scores"]["concepts"]
            w.writerow([r["student"], r["status"], f"{r['scores']['total']:g}", f"{r['scores']['max_total']:g}"]
                       + [f"{sc[c][d]:g}" if c in sc else "" for c in concepts for d in ("float32", "float64")]
                       + [f"{r['seconds']:g}"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.grade", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Points and concepts: tests/grading/points.csv. Staged path: "
                                        "walkthrough/ASSIGNMENTS.md.")
    ap.add_argument("class_dir", nargs="?", help="folder with one sub-folder of modules per student")
    ap.add_argument("--out", default=None, help="the CSV gradebook to write (required with CLASS_DIR)")
    ap.add_argument("--student", default=None, help="grade this one folder and print its feedback instead")
    ap.add_argument("--feedback-dir", default=None,
                    help="write <student>/FEEDBACK.md and grade.json here (default: in each student's folder)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per student (default 600)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the random cases (default: fresh entropy)")
    ap.add_argument("--only", default="", help="comma-separated concepts to grade (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="students graded at the same time (default 1)")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little")
    known = points_mod.concepts(points_mod.load())
    unknown = sorted({c for c in a.only.split(",") if c} - set(known))
    if unknown:
        print(f"grade: --only: unknown concept(s) {unknown}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    if a.student:
        folder = Path(a.student).expanduser().resolve()
        if not folder.is_dir():
            print(f"grade: --student {a.student}: not a directory", file=sys.stderr)
            return 2
        out = Path(a.feedback_dir).resolve() / folder.name if a.feedback_dir else folder
        rep = grade_one(folder, out, seed, a.timeout, a.only)
        print((out / "FEEDBACK.md").read_text())
        return 0 if rep["status"] == "graded" else 1
    if not a.class_dir or not a.out:
        ap.print_usage(sys.stderr)
        print("grade: give CLASS_DIR and --out grades.csv (or --student DIR)", file=sys.stderr)
        return 2
    class_dir = Path(a.class_dir).expanduser().resolve()
    if not class_dir.is_dir():
        print(f"grade: {a.class_dir}: not a directory (expected one sub-folder per student)", file=sys.stderr)
        return 2
    students = students_in(class_dir)
    if not students:
        print(f"grade: {class_dir}: no student sub-folder holding .py files", file=sys.stderr)
        return 2
    rows = [r for r in points_mod.load() if not a.only or r.concept in a.only.split(",")]
    concepts = points_mod.concepts(rows)
    print(f"[grade] {len(students)} students in {class_dir}, {len(rows)} checks in {len(concepts)} concepts, "
          f"seed {seed}, timeout {a.timeout:g} s each", flush=True)
    def one(s):
        out = Path(a.feedback_dir).resolve() / s.name if a.feedback_dir else s
        t0 = time.time()
        rep = grade_one(s, out, seed, a.timeout, a.only)
        return rep, out, time.time() - t0

    from concurrent.futures import ThreadPoolExecutor   # each student is a subprocess: threads only wait
    reports = []
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        for i, (rep, out, dt) in enumerate(pool.map(one, students), 1):
            reports.append(rep)
            print(f"[grade] {i}/{len(students)} {rep['student']}: {rep['scores']['total']:g} / "
                  f"{rep['scores']['max_total']:g} ({rep['status']}, {dt:.1f} s) -> {out / 'FEEDBACK.md'}", flush=True)
    out_csv = Path(a.out).expanduser()
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out_csv, reports, concepts)
    print(f"[grade] wrote {out_csv}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
