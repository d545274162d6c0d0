"""Reference tier: the speed benchmark (tests/bench/bench_speed.py) still runs, so it cannot rot.

Runs ``python -m tests.bench.bench_speed --quick`` (tiny models, one timed call per case) and checks that it
exits cleanly and prints one table row per case with both times and a ratio. No time is asserted: speed is
a benchmark's business, never a test's (timings on a shared CPU are noise). The benchmark itself fails if
the two sides disagree (decode tokens, or outputs beyond 1e-3 relative), so a passing run also says the
sides computed the same thing.
"""
import re
import subprocess
import sys

import pytest

from tests.bench.bench_speed import CASES, REPO, describe

pytestmark = [pytest.mark.reference, pytest.mark.foundation]

NUM = r"(\d[\d.]*(?:e[-+]\d+)?)"
ROW = rf"^{{label}}\s+{NUM}\s+{NUM}\s+{NUM}x\s+\d+\s+\d+\s+\S"


def test_bench_speed_quick_prints_one_ratio_per_case():
    p = subprocess.run([sys.executable, "-m", "tests.bench.bench_speed", "--quick", "--threads", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert "numpy" in out and "torch" in out and "threads 1" in out, out
    for case in CASES:
        rows = re.findall(ROW.format(label=re.escape(describe(case, True))), out, flags=re.M)
        assert len(rows) == 1, f"{case}: expected one ratio row\n{out}"
        ours, ref, ratio = map(float, rows[0])
        assert ours > 0 and ref > 0 and ratio > 0, rows[0]
    assert "tokens equal" in out                 # the decode case compared the greedy tokens
    assert out.count("rel err") == len(CASES) - 1


def test_bench_speed_rejects_unknown_case():
    p = subprocess.run([sys.executable, "-m", "tests.bench.bench_speed", "--cases", "text,speech"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "speech" in p.stderr, p.stderr
