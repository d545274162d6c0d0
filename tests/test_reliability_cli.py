"""The command line as a careless or hostile user drives it: each mistake exits 2 with one line naming the
argument or file at fault, no traceback; a closed stdout ends generation quietly; sampling never returns an
id outside the vocabulary; the tokenizer is checked against the model."""
import os
import subprocess
import sys

import numpy as np
import pytest

from minig3n.errors import CheckpointError, InputError, NumericsError
from minig3n.sampling import SamplingParams, greedy, sample_next
from minig3n.tokenizer import Tokenizer
from tests.conftest import REPO, TINY, WEIGHTS
from tests.reliability import assert_one_line_error, cli, clone

pytestmark = pytest.mark.generation

NANO = WEIGHTS / "nano-gemma3n"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("flag", ["--prompt", "--chat", "--system"])
def test_non_utf8_text_argument_in_process(capsys, flag):
    """Python hands undecodable argv bytes over as lone surrogates (surrogateescape): b'\\xff' -> '\\udcff'."""
    args = ["--chat", "Hi", "--system", "a\udcffb"] if flag == "--system" else [flag, "a\udcffb"]
    code, out, err = cli(capsys, "generate", "--model", NANO, *args, "--max-new-tokens", 1)
    assert_one_line_error(code, err, "generate", flag, "not valid UTF-8", "byte 0xFF at character 1")
    assert out == ""


def test_non_utf8_prompt_real_argv():
    r = subprocess.run([sys.executable, "-m", "minig3n", "generate", "--model", str(NANO), "--prompt",
                        b"caf\xe9"], capture_output=True, env=ENV, timeout=120)
    assert r.returncode == 2 and r.stdout == b""
    assert r.stderr.decode().strip() == ("minig3n generate: error: --prompt: not valid UTF-8 text (byte 0xE9 at "
                                         "character 3); pass the text in UTF-8")


def test_broken_pipe_exits_quietly():
    """`minig3n generate ... | head -c 20`: the pipe closes after 20 bytes; minig3n stops with 141
    (128 + SIGPIPE), as a Unix tool does, and prints nothing (no BrokenPipeError, no 'Exception ignored')."""
    cmd = (f"{sys.executable} -m minig3n generate --model {NANO} --prompt 'Once upon a time' --max-new-tokens 300 "
           "| head -c 20; echo \"rc=${PIPESTATUS[0]}\" >&2")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, env=ENV, timeout=300)
    err = r.stderr.decode()
    assert len(r.stdout) == 20
    assert "Traceback" not in err and "Broken" not in err and "Exception ignored" not in err, err
    assert err.strip().splitlines()[-1] == "rc=141", err


def test_too_long_prompt_is_blamed_on_the_prompt(capsys):
    """tiny: max_position_embeddings = 512; a 600-token prompt leaves no room whatever --max-new-tokens is."""
    code, _, err = cli(capsys, "generate", "--model", TINY, "--prompt", "a " * 600, "--max-new-tokens", 1)
    line = assert_one_line_error(code, err, "generate", "the prompt is too long", "max_position_embeddings=512")
    assert "--max-new-tokens" not in line
    # a prompt that fits, with too many new tokens: blamed on --max-new-tokens, with the number that fits
    code, _, err = cli(capsys, "generate", "--model", TINY, "--prompt", "a " * 100, "--max-new-tokens", 500)
    assert_one_line_error(code, err, "generate", "--max-new-tokens", "new tokens fit after this prompt")


@pytest.mark.parametrize("flag", ["--image", "--audio"])
def test_media_to_a_text_only_model(capsys, tmp_path, flag):
    from PIL import Image
    from scipy.io import wavfile
    f = tmp_path / ("x.png" if flag == "--image" else "x.wav")
    if flag == "--image":
        Image.new("RGB", (8, 8)).save(f)
    else:
        wavfile.write(f, 16000, np.zeros(1600, np.int16))
    code, _, err = cli(capsys, "generate", "--model", NANO, "--chat", "Hi", flag, f, "--max-new-tokens", 1)
    assert_one_line_error(code, err, "generate", str(NANO), "text-only (gemma3n_text) checkpoint", flag)


def test_inspect_garbage_tokenizer(capsys, tmp_path):
    d = clone(NANO, tmp_path / "m", **{"tokenizer.model": b"\x0a\x05hello" * 100})
    code, _, err = cli(capsys, "inspect", "--model", d)
    assert_one_line_error(code, err, "inspect", d / "tokenizer.model")


def test_inspect_tokenizer_of_another_model(capsys, tmp_path):
    """nano's tokenizer (4096 pieces) in the tiny checkpoint (vocab_size 1280): refused by inspect and by
    generate before the weights load. Kills the mutant that drops the tokenizer-vs-model check (without
    it, generate would run, and ids >= 1280 would index past the embedding table)."""
    d = clone(TINY, tmp_path / "m", **{"tokenizer.model": (NANO / "tokenizer.model").read_bytes()})
    for argv in (["inspect", "--model", d], ["generate", "--model", d, "--prompt", "Hi", "--max-new-tokens", 1]):
        code, _, err = cli(capsys, *argv)
        assert_one_line_error(code, err, argv[0], d / "tokenizer.model", "4096 pieces",
                              "more than the model's vocab_size 1280")


def test_inspect_reports_a_fitting_tokenizer(capsys):
    code, out, _ = cli(capsys, "inspect", "--model", NANO)
    assert code == 0 and "tokenizer.model: 4096 pieces, fits vocab_size 4096" in out


def test_decode_refuses_ids_outside_the_vocabulary():
    """Kills the mutant that drops decode's range check: id == vocab_size and -1 must be InputErrors naming
    the id, not a KeyError from a table lookup (or, for -1, the last piece silently)."""
    tok = Tokenizer.from_dir(NANO)
    assert tok.decode([tok.vocab_size - 1]) == tok.text_of.get(tok.vocab_size - 1, tok.decode([tok.vocab_size - 1]))
    for bad in (tok.vocab_size, -1, 10 ** 12):
        with pytest.raises(InputError, match=rf"token id {bad} is out of range: ids must lie in \[0, 4096\)"):
            tok.decode([5, bad])


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=1.0, seed=0),
                                    SamplingParams(temperature=0.7, top_k=5, seed=1),
                                    SamplingParams(temperature=1.3, top_p=0.5, seed=2)],
                         ids=["greedy", "t1", "topk", "topp"])
def test_sampling_never_returns_an_out_of_range_id(params):
    rng = np.random.default_rng(0)
    V = 97
    for trial in range(200):
        logits = rng.standard_normal(V) * rng.choice([1e-3, 1.0, 50.0, 1e4])
        logits[rng.random(V) < 0.5] = -np.inf                          # masked tokens
        logits[rng.integers(V)] = rng.standard_normal()                # at least one finite
        t = sample_next(logits, params, rng)
        assert 0 <= t < V and np.isfinite(logits[t])


@pytest.mark.parametrize("bad", ["nan", "inf", "all -inf"])
@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=1.0, seed=0)], ids=["greedy", "t1"])
def test_sampling_refuses_nonfinite_logits(bad, params):
    """NaN logits: argmax would pick the NaN and the cumulative sum would be NaN, pointing past the
    vocabulary (searchsorted returns V). Refused instead, naming the logits."""
    x = np.zeros(10)
    if bad == "nan":
        x[3] = np.nan
    elif bad == "inf":
        x[3] = np.inf
    else:
        x[:] = -np.inf
    with pytest.raises(NumericsError, match="logits: "):
        sample_next(x, params, np.random.default_rng(0))
    with pytest.raises(NumericsError):
        greedy(x) if bad != "all -inf" else sample_next(x, params)


def test_trace_out_is_a_directory(capsys, tmp_path):
    (tmp_path / "out").mkdir()
    code, _, err = cli(capsys, "trace", "--model", NANO, "--ids", "2,5", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "trace", "--out", tmp_path / "out", "is a directory")
    assert os.listdir(tmp_path / "out") == [] and sorted(os.listdir(tmp_path)) == ["out"]


def test_checkpoint_error_types_are_one_line(capsys, tmp_path):
    """A checkpoint whose weights file is a directory: named, one line."""
    d = clone(NANO, tmp_path / "m", **{"model.safetensors": None})
    (d / "model.safetensors").mkdir()
    code, _, err = cli(capsys, "inspect", "--model", d)
    assert_one_line_error(code, err, "inspect", d / "model.safetensors", "is a directory")
    with pytest.raises(CheckpointError):
        from minig3n.checkpoint import Checkpoint
        Checkpoint(d)
