"""The MINIG3N_STUDENT seam (tests/adapters/_impl.py): the same golden tests that check minig3n grade a
student's functions (NumPy tier). Moved here from tests/test_walkthrough.py (issue 15).

A golden test run in a subprocess with the variable pointing at a deliberately wrong implementation must
fail, and pass with an independent correct one; a re-export of minig3n's function is refused; the
student's files import each other (their folder is a package of its own).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adapters import _impl

pytestmark = pytest.mark.walkthrough

REPO = Path(__file__).resolve().parent.parent
WALK = REPO / "walkthrough"

WRONG_LAUREL = '''
"""A plausible mistake: the Gemma 2/3 habit of (1 + w) in the norm."""
from minig3n.ops import linear, rms_norm


def laurel(x, p, eps=1e-6):
    up = linear(linear(x, p["linear_left.weight"]), p["linear_right.weight"])
    return x + rms_norm(up, 1.0 + p["post_laurel_norm.weight"], eps)
'''

OWN_LAUREL = '''
import numpy as np


def laurel(x, p, eps=1e-6):
    low = x @ p["linear_left.weight"].astype(x.dtype).T
    up = low @ p["linear_right.weight"].astype(x.dtype).T
    ms = np.mean(up * up, axis=-1, keepdims=True)
    return x + up * (ms + x.dtype.type(eps)) ** x.dtype.type(-0.5) * p["post_laurel_norm.weight"].astype(x.dtype)
'''

REEXPORT_LAUREL = "from minig3n.laurel import laurel  # noqa: F401\n"


def _graded(student_dir, node="tests/test_text_modules.py::test_laurel_golden"):
    env = {**os.environ, _impl.ENV: str(student_dir)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                          cwd=REPO, env=env, capture_output=True, text=True)


def test_wrong_student_laurel_fails_the_golden_test_and_a_correct_one_passes(tmp_path):
    wrong, right = tmp_path / "wrong", tmp_path / "right"
    wrong.mkdir()
    right.mkdir()
    (wrong / "laurel.py").write_text(WRONG_LAUREL)
    (right / "laurel.py").write_text(OWN_LAUREL)
    r = _graded(wrong)
    assert r.returncode != 0, r.stdout
    assert "1 failed" in r.stdout and "rel err" in r.stdout, r.stdout
    r = _graded(right)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr


def test_resolution_rules(tmp_path, monkeypatch):
    """Per function: the student's definition when the file defines it, minig3n's otherwise; no variable, no
    change; a file that does not import is an error, as is a variable naming no directory; a re-export of
    a graded function is refused."""
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
    (tmp_path / "laurel.py").write_text("from .ops import rms_norm\n")           # the student has no ops.py
    with pytest.raises(_impl.StudentImportError, match=r"laurel.py: importing your module failed"):
        _impl.impl("laurel").laurel
    (tmp_path / "laurel.py").write_text(REEXPORT_LAUREL)
    with pytest.raises(_impl.NotYourCodeError, match=r"laurel is minig3n's own minig3n.laurel.laurel, re-exported"):
        _impl.impl("laurel").laurel
    monkeypatch.setenv(_impl.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(_impl.StudentImportError, match="not a directory"):
        _impl.impl("laurel").laurel


def test_student_modules_import_each_other_through_the_seam(tmp_path, monkeypatch):
    """A student's decoder-like file builds on their own laurel, with either import style."""
    (tmp_path / "laurel.py").write_text(OWN_LAUREL)
    (tmp_path / "mlp.py").write_text("from laurel import laurel\nfrom .laurel import laurel as same\n\n\n"
                                     "def std_multiplier(s):\n    return (laurel.__module__, same.__module__)\n")
    monkeypatch.setenv(_impl.ENV, str(tmp_path))
    assert _impl.impl("mlp").std_multiplier(0.9) == ("laurel", "minig3n_student.laurel")


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
                    "kv_cache", "generate", "tokenizer", "features", "usm", "embedder", "audio_io", "matformer",
                    "mobilenetv5"]


def test_stubs_import_and_raise_not_implemented(tmp_path, monkeypatch):
    """walkthrough/make_stub.py writes an importable file for every module ASSIGNMENTS.md assigns; graded
    through the adapter, a fresh laurel stub raises NotImplementedError (the tests grade the stub, not
    minig3n); a graded class (KVCache) is stubbed too, not imported from minig3n."""
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
    cache = (tmp_path / "kv_cache.py").read_text()
    assert "class KVCache:" in cache and "    def empty(cls, cfg, batch_size: int" in cache
    assert not [ln for ln in cache.splitlines() if ln.startswith("from minig3n.kv_cache import") and "KVCache" in ln]
    with pytest.raises(NotImplementedError):
        A.run_empty_cache(A.text_config(g.meta["config"]), 1, np.float32)


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


# Every graded function, directly, through the seam ----------------------------------------------------------
MARK = {"laurel": "text", "mlp": "text", "ple": "text", "altup": "text", "attention": "text", "decoder": "text",
        "kv_cache": "generation", "sampling": "generation", "generation": "generation", "features": "audio",
        "usm": "audio", "embedder": "audio", "mobilenetv5": "vision"}


def _rows():
    from tests.grading import points
    return [pytest.param(r, marks=getattr(pytest.mark, MARK[r.concept]), id=f"{r.concept}-{r.check}")
            for r in points.load()]


@pytest.mark.parametrize("row", _rows())
def test_graded_function_cases(row, monkeypatch):
    """The grader's golden and random cases of one graded function (tests/grading/cases.py), called through
    ``impl(module)``: minig3n's function (proven equal to the reference, so these cases are consistent), or
    with ``MINIG3N_STUDENT`` set, the student's, so ``MINIG3N_STUDENT=~/my_g3n pytest -m text`` grades every
    text function directly and a stub fails. (No cheat detection here: that is ``python -m tests.grade``.)"""
    import numpy as np

    from tests.grading import cases, points
    from tests.grading.engine import DTYPES, compare

    monkeypatch.setenv("MINIG3N_ACCEL", "numpy")
    target = getattr(_impl.impl(row.module), row.function)
    bad, n = [], 0
    for dt in ([None] if row.check in points.DTYPE_FREE else list(DTYPES.values())):
        for case in cases.BUILDERS[row.check](dt, np.random.default_rng()):
            got = case.run(target)
            got = got if isinstance(got, dict) else {"out": got}
            for name, want in case.want.items():
                n += 1
                tol = case.tol * (2 if dt == np.float32 and case.label.startswith("random") else 1)
                c = compare(got[name], want, tol, case.exact, case.notes.get("absolute", False))
                if not c["ok"]:
                    bad.append(f"{row.module}.{row.function} {dt.__name__ if dt else 'any'} {case.label} `{name}`: "
                               f"err {c['err']} > {tol:g} at {c['where']} (got {c['got']}, want {c['want']})")
    assert n and not bad, "\n".join(bad)
