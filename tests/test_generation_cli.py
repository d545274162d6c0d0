"""``minig3n generate``: output, the statistics line, and one-line errors with exit code 2 for bad input."""
import os
import subprocess
import sys

import pytest

from tests.adapters import generation as A

pytestmark = pytest.mark.generation


def run(capsys, *argv):
    code = A.run_cli(["generate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_prints_text_and_stats(capsys, tiny_dir):
    code, out, err = run(capsys, "--model", str(tiny_dir), "--prompt", "Per-layer embeddings", "--max-new-tokens", "64")
    assert code == 0 and out.endswith("\n")
    tok = A.load_tokenizer(tiny_dir)
    want = A.run_generate(tiny_dir, "Per-layer embeddings", max_new_tokens=64)
    assert out == "".join(p for _, p in want) + "\n"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"prompt tokens: {len(tok.encode('Per-layer embeddings'))}, new tokens: 64, prefill: ")
    assert "decode: " in last and last.endswith("tokens/s")


def test_chat_with_system_and_sampling(capsys, tiny_dir):
    code, out, err = run(capsys, "--model", str(tiny_dir), "--chat", "Hi", "--system", "Be brief.", "--max-new-tokens",
                         "8", "--temperature", "0.7", "--top-k", "20", "--top-p", "0.9", "--seed", "3",
                         "--dtype", "float64")
    assert code == 0 and "prompt tokens: " in err


@pytest.mark.parametrize("args,name", [
    (["--prompt", ""], "prompt"),
    (["--prompt", "   "], "prompt"),
    (["--chat", ""], "chat"),
    (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--prompt", "x", "--max-new-tokens", "-5"], "--max-new-tokens"),
    (["--prompt", "x", "--max-new-tokens", "600"], "max_position_embeddings"),
    (["--prompt", "x", "--temperature", "-1"], "temperature"),
    (["--prompt", "x", "--temperature", "inf"], "temperature"),
    (["--prompt", "x", "--top-p", "0"], "top_p"),
    (["--prompt", "x", "--top-p", "1.01"], "top_p"),
    (["--prompt", "x", "--top-k", "-1"], "top_k"),
    (["--prompt", "x", "--seed", "-1"], "seed"),
    (["--prompt", "x", "--system", "s"], "--system"),
])
def test_bad_arguments(capsys, tiny_dir, args, name):
    code, out, err = run(capsys, "--model", str(tiny_dir), *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minig3n generate: error: ") and name in lines[0], err


def test_missing_tokenizer_model(capsys, tiny_dir, tmp_path):
    for f in tiny_dir.iterdir():
        if f.name != "tokenizer.model":
            os.symlink(f, tmp_path / f.name)
    code, out, err = run(capsys, "--model", str(tmp_path), "--prompt", "x")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "tokenizer.model" in err


def test_missing_model_dir(capsys, tmp_path):
    code, out, err = run(capsys, "--model", str(tmp_path / "nope"), "--prompt", "x")
    assert code == 2 and "nope" in err and len(err.strip().splitlines()) == 1


def test_subprocess_error_has_no_traceback(tiny_dir):
    p = subprocess.run([sys.executable, "-m", "minig3n", "generate", "--model", str(tiny_dir), "--prompt", "x",
                        "--top-p", "2"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == "minig3n generate: error: top_p (--top-p) must lie in (0, 1] (1 = off), got 2.0"


def test_default_model_is_embedded():
    """--model defaults to weights/nano-gemma3n if it exists, else weights/tiny-random-gemma3n."""
    from minig3n.generate import default_model_dir   # the CLI's default, not a numeric function: no adapter
    d = default_model_dir()
    assert d.name in ("nano-gemma3n", "tiny-random-gemma3n") and (d / "config.json").is_file()
