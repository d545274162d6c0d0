"""Reference tier: tokenizer, chat template and greedy generation against the live reference."""
import json
import shutil

import numpy as np
import pytest
import torch

from tests.adapters import generation as A
from tests.reference import goldens_generation as G
from tests.reference.generation_cases import CONVERSATIONS, DECODE_BYTE_RUNS, GENERATION_PROMPTS, TOKENIZER_STRINGS

pytestmark = [pytest.mark.reference, pytest.mark.generation]


@pytest.fixture(scope="module")
def hf_tok():
    return G.reference_tokenizer()


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return A.load_tokenizer(tiny_dir)


def test_tokenizer_matches_live_reference(hf_tok, tok):
    assert len(TOKENIZER_STRINGS) >= 30
    for text in TOKENIZER_STRINGS:
        ids = hf_tok(text)["input_ids"]
        assert A.run_encode(tok, text) == ids, repr(text)
        assert A.run_encode(tok, text, add_bos=False) == hf_tok(text, add_special_tokens=False)["input_ids"]
        assert A.run_decode(tok, ids) == hf_tok.decode(ids)
        assert A.run_decode(tok, ids, skip_special_tokens=True) == hf_tok.decode(ids, skip_special_tokens=True)
    for run in DECODE_BYTE_RUNS:
        seq = G.byte_run_ids(hf_tok, run)
        assert A.run_decode(tok, seq) == hf_tok.decode(seq)


def test_decode_random_id_sequences(hf_tok, tok):
    rng = np.random.default_rng(0)
    for _ in range(300):
        seq = rng.integers(0, len(hf_tok), size=rng.integers(1, 24)).tolist()
        for skip in (False, True):
            assert A.run_decode(tok, seq, skip) == hf_tok.decode(seq, skip_special_tokens=skip), seq


def test_chat_template_matches_live_reference(tok):
    proc = G.reference_processor()
    for conv in CONVERSATIONS:
        text = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert A.run_render_chat(conv) == text
        ids = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)[0]
        assert A.run_encode_chat(tok, conv) == list(ids)
        no_gen = proc.apply_chat_template(conv, add_generation_prompt=False, tokenize=False)
        assert A.run_render_chat(conv, add_generation_prompt=False) == no_gen


def test_media_placeholders_match_processor(tok):
    from PIL import Image
    proc = G.reference_processor()
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "audio"}]}]
    text = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    assert A.run_render_chat(conv) == text
    image = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    # the rendered text already holds <bos>: call the processor without adding another
    ids = proc(text=text, images=image, audio=np.zeros(1600, np.float32), add_special_tokens=False,
               return_tensors="np")["input_ids"][0]
    expanded = A.run_expand_media(text, proc.image_seq_length, proc.audio_seq_length)
    assert A.run_encode(tok, expanded, add_bos=False) == ids.tolist()


def test_tiny_greedy_64_tokens_matches_live_reference(tiny_dir, hf_tok):
    torch.set_num_threads(1)
    model = G.tiny_model()
    for prompt in GENERATION_PROMPTS:
        ids = hf_tok(prompt)["input_ids"]
        want = G.greedy(model, ids, 64)
        assert [t for t, _ in A.run_generate_ids(tiny_dir, ids, 64)] == want


def test_second_config_greedy_matches_live_reference(tiny_dir, tmp_path):
    """Prompt (24 tokens) longer than the sliding window (6); consumers of both layer types; text-only
    Gemma3nForCausalLM layout saved by the reference's save_pretrained."""
    torch.set_num_threads(1)
    model = G.second_model()
    model.save_pretrained(tmp_path)
    shutil.copy(tiny_dir / "tokenizer.model", tmp_path / "tokenizer.model")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gemma3n_text"
    prompt = G.second_prompt()
    want = G.greedy(model, prompt, 64)
    assert len(prompt) > cfg["sliding_window"] and len(want) == 64
    assert [t for t, _ in A.run_generate_ids(tmp_path, prompt, 64)] == want
