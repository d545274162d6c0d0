"""Greedy generation equals the reference's generate(do_sample=False) token for token (goldens), on the tiny
multimodal checkpoint and on a second, text-only config whose prompt is longer than its sliding window and
whose KV-shared layers are of both types; plus the Python API's streaming and stop behaviour."""
import json
import shutil

import numpy as np
import pytest

from minig3n.checkpoint import save_safetensors
from tests.adapters import generation as A
from tests.golden_io import load_golden

pytestmark = pytest.mark.generation


@pytest.fixture(scope="module")
def gold():
    return load_golden("generation_greedy")


@pytest.fixture(scope="module")
def second_dir(gold, tiny_dir, tmp_path_factory):
    """The second config as a checkpoint directory: config.json + model.safetensors (float32, from the golden's
    weights) + the tiny checkpoint's tokenizer.model (same vocabulary size)."""
    d = tmp_path_factory.mktemp("second")
    (d / "config.json").write_text(json.dumps(gold.meta["second_config"]))
    save_safetensors(d / "model.safetensors", {k: np.ascontiguousarray(v, np.float32) for k, v in gold.weights.items()})
    shutil.copy(tiny_dir / "tokenizer.model", d / "tokenizer.model")
    return d


def test_tiny_greedy_matches_reference(tiny_dir, gold):
    m = gold.meta
    for prompt, ids, want in zip(m["tiny_prompts"], m["tiny_prompt_ids"], m["tiny_tokens"]):
        assert A.run_encode(A.load_tokenizer(tiny_dir), prompt) == ids
        got = [t for t, _ in A.run_generate_ids(tiny_dir, ids, m["max_new_tokens"])]
        assert got == want        # identical greedy tokens (float32), the stop token included
    assert max(len(t) for t in m["tiny_tokens"]) == 64 and min(len(t) for t in m["tiny_tokens"]) < 64


def test_second_config_greedy_matches_reference(second_dir, gold):
    m = gold.meta
    cfg = m["second_config"]
    first_shared = cfg["num_hidden_layers"] - cfg["num_kv_shared_layers"]
    assert len(m["second_prompt"]) > cfg["sliding_window"]
    assert set(cfg["layer_types"][first_shared:]) == {"sliding_attention", "full_attention"}
    got = [t for t, _ in A.run_generate_ids(second_dir, m["second_prompt"], m["max_new_tokens"])]
    assert got == m["second_tokens"] and len(got) == 64


def test_float64_greedy_matches_too(tiny_dir, gold):
    """float64 mode computes in true float64; the greedy margins of this model (> 1e-2) dwarf the float32 vs
    float64 difference (~1e-6), so the tokens are the same."""
    m = gold.meta
    got = [t for t, _ in A.run_generate_ids(tiny_dir, m["tiny_prompt_ids"][1], 64, dtype="float64")]
    assert got == m["tiny_tokens"][1]


def test_stream_pieces_equal_final_decode(tiny_dir, gold):
    tok = A.load_tokenizer(tiny_dir)
    m = gold.meta
    for ids in m["tiny_prompt_ids"]:
        out = A.run_generate_ids(tiny_dir, ids, 64)
        tokens = [t for t, _ in out]
        body = tokens[:-1] if tokens[-1] in (1, 7) else tokens
        assert "".join(p for _, p in out) == A.run_decode(tok, body)


def test_sampled_generation_is_seeded(tiny_dir):
    kw = dict(max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.95)
    a = A.run_generate(tiny_dir, "Gemma", seed=5, **kw)
    b = A.run_generate(tiny_dir, "Gemma", seed=5, **kw)
    c = A.run_generate(tiny_dir, "Gemma", seed=6, **kw)
    assert a == b and a != c


def test_chat_generation_stops_at_end_of_turn_or_limit(tiny_dir):
    out = A.run_generate(tiny_dir, chat="Hello", system="Be brief.", max_new_tokens=20)
    tokens = [t for t, _ in out]
    assert len(tokens) == 20 or tokens[-1] in (1, 7)
    assert all(t not in (1, 7) for t in tokens[:-1])
