"""Multimodal end to end (issue 7) on weights/tiny-random-gemma3n: processor ids and arrays, the merge, logits
and greedy tokens against the reference's golden (tests/goldens/multimodal_conversation.safetensors)."""
import re

import numpy as np
import pytest

from tests.adapters import multimodal as A
from tests.golden_io import load_golden, rel_err
from tests.multimodal_cases import conversation, make_audio, make_images

pytestmark = pytest.mark.multimodal


@pytest.fixture(scope="module")
def golden():
    return load_golden("multimodal_conversation")


@pytest.fixture(scope="module")
def model32(tiny_dir):
    return A.load_model(tiny_dir, np.float32)


@pytest.fixture(scope="module")
def model64(tiny_dir):
    return A.load_model(tiny_dir, np.float64)


def golden_inputs(g, dtype=np.float32):
    return {"input_ids": g.inputs["input_ids"].astype(np.int64),
            "pixel_values": g.inputs["pixel_values"].astype(dtype),
            "input_features": g.inputs["input_features"].astype(dtype),
            "input_features_mask": g.inputs["input_features_mask"].astype(bool)}


# Processor --------------------------------------------------------------------------------------------------
def test_processor_matches_reference_processor(golden, tiny_dir):
    """Ids, token types, pixel values, audio features and mask equal the reference processor's (PIL backend)."""
    got = A.run_process_messages(tiny_dir, conversation(make_images(), make_audio()))
    np.testing.assert_array_equal(got["input_ids"], golden.inputs["input_ids"].astype(np.int64))
    np.testing.assert_array_equal(got["token_type_ids"], golden.inputs["token_type_ids"].astype(np.int64))
    np.testing.assert_array_equal(got["attention_mask"], np.ones_like(got["input_ids"]))
    # exact: both resize the same uint8 image with PIL BILINEAR and scale by 1/255
    np.testing.assert_array_equal(got["pixel_values"], golden.inputs["pixel_values"])
    np.testing.assert_array_equal(got["input_features"], golden.inputs["input_features"])  # bit-exact log-mel
    np.testing.assert_array_equal(got["input_features_mask"], golden.inputs["input_features_mask"].astype(bool))


def test_processor_layout_by_hand(tiny_dir):
    """Hand-derived layout. The tiny processor writes 16 image soft tokens per image and 188 audio soft tokens
    per clip. One image and one clip in a user turn: the ids hold <start_of_image> (1022), 16 x 1025, then
    <end_of_image> (1024); later <start_of_audio> (1023), 188 x 1153, <end_of_audio> (1152). Token types are
    1 exactly at the 16 image soft tokens and 3 at the 188 audio soft tokens. 0.5 s at 16 kHz = 8000 samples,
    padded to 8064 (a multiple of 128): (8064 - 513) // 160 + 1 = 48 frames, the first 50 real samples every 160
    -> frames 0..49 start on a real sample, so all 48 are valid."""
    msgs = [{"role": "user", "content": [{"type": "image", "image": make_images()[0]},
                                         {"type": "audio", "audio": make_audio(0.5)},
                                         {"type": "text", "text": "Hi"}]}]
    got = A.run_process_messages(tiny_dir, msgs)
    ids = list(got["input_ids"][0])
    i = ids.index(1022)
    assert ids[i + 1:i + 17] == [1025] * 16 and ids[i + 17] == 1024
    j = ids.index(1023)
    assert ids[j + 1:j + 189] == [1153] * 188 and ids[j + 189] == 1152
    types = got["token_type_ids"][0]
    assert (types == 1).sum() == 16 and (types == 3).sum() == 188 and set(np.unique(types)) == {0, 1, 3}
    assert got["pixel_values"].shape == (1, 3, 128, 128)
    assert got["input_features"].shape == (1, 48, 128) and got["input_features_mask"].all()


def test_processor_raw_prompt_placeholders(tiny_dir):
    """A raw prompt with one placeholder per item expands like the chat path; <bos> is added."""
    ims = make_images()
    got = A.run_process_prompt(tiny_dir, "A <image_soft_token> B <image_soft_token> C <audio_soft_token>",
                               ims, [make_audio()])
    ids = got["input_ids"][0]
    assert ids[0] == 2 and (ids == 1025).sum() == 32 and (ids == 1153).sum() == 188
    assert got["pixel_values"].shape[0] == 2 and got["input_features"].shape[0] == 1


@pytest.mark.parametrize("text,n_img,n_aud,msg", [
    ("no placeholder", 1, 0, "0 <image_soft_token> placeholder(s) but 1 image"),
    ("<image_soft_token> <image_soft_token>", 1, 0, "2 <image_soft_token> placeholder(s) but 1 image"),
    ("<audio_soft_token>", 0, 0, "1 <audio_soft_token> placeholder(s) but 0 audio"),
    ("<audio_soft_token> and <audio_soft_token>", 0, 2, "more than one target audio clip"),
])
def test_processor_prompt_errors(tiny_dir, text, n_img, n_aud, msg):
    from minig3n.errors import InputError
    with pytest.raises(InputError, match=re.escape(msg)):
        A.run_process_prompt(tiny_dir, text, make_images()[:n_img], [make_audio()] * n_aud)


def test_audio_rule_target_and_few_shot(tiny_dir):
    """At most one target clip (the last user turn); clips in earlier, answered turns are few-shot examples."""
    from minig3n.errors import InputError
    a, b = make_audio(), make_audio(0.5, f0=500.0)
    few_shot = [{"role": "user", "content": [{"type": "audio", "audio": b}, {"type": "text", "text": "Say it."}]},
                {"role": "assistant", "content": "a tone"},
                {"role": "user", "content": [{"type": "audio", "audio": a}, {"type": "text", "text": "Say it."}]}]
    got = A.run_process_messages(tiny_dir, few_shot)
    assert got["input_features"].shape[0] == 2 and (got["input_ids"] == 1153).sum() == 2 * 188
    # the shorter clip is padded to the longer one; its tail frames are invalid
    assert got["input_features_mask"][0].sum() < got["input_features_mask"][1].sum()
    two_targets = [{"role": "user", "content": [{"type": "audio", "audio": a}, {"type": "audio", "audio": b}]}]
    with pytest.raises(InputError, match="more than one target audio clip"):
        A.run_process_messages(tiny_dir, two_targets)
    # a raw prompt writing its own turns: clips before the last user turn are few-shot
    raw = ("<start_of_turn>user\n<audio_soft_token><end_of_turn>\n<start_of_turn>model\ntone<end_of_turn>\n"
           "<start_of_turn>user\n<audio_soft_token><end_of_turn>\n<start_of_turn>model\n")
    assert A.run_process_prompt(tiny_dir, raw, [], [b, a])["input_features"].shape[0] == 2


# Merge ------------------------------------------------------------------------------------------------------
def test_merge_by_hand():
    """Hand-derived: ids [5, 9, 9, 5, 9] with token 9 and features of 3 rows [[1,1],[2,2],[3,3]] (one item of 3
    rows) -> rows 1, 2, 4 become 1, 2, 3 in order; rows 0 and 3 keep their embedding 0.5. A count mismatch
    (2 placeholders, 3 rows) is an error naming both counts."""
    from minig3n.errors import InputError
    emb = np.full((1, 5, 2), 0.5)
    feats = np.array([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    got = A.run_merge(emb, np.array([[5, 9, 9, 5, 9]]), 9, feats)
    np.testing.assert_array_equal(got[0, :, 0], [0.5, 1.0, 2.0, 0.5, 3.0])
    with pytest.raises(InputError, match="2 test soft tokens .* 3 rows"):
        A.run_merge(emb, np.array([[5, 9, 9, 5, 5]]), 9, feats)


def test_audio_invalid_frames_and_padding(model64, golden):
    """Hand-derived: the 0.8 s clip has 12800 samples (a multiple of 128: no padding), so 77 valid mel frames,
    and ceil(ceil(ceil(77/2)/2)/4) = 5 encoder frames, all valid; rows 5..187 are the audio hard embedding of id
    vocab_size - 1 = 1279 (embed_audio row 127). Marking mel frames 57.. invalid invalidates the encoder frames j
    whose mel frame 16 j >= 57, i.e. j = 4: row 4 becomes the padding vector too."""
    feats = golden.inputs["input_features"].astype(np.float64)
    mask = golden.inputs["input_features_mask"].astype(bool)
    pad = A.run_audio_padding_embedding(model64)
    np.testing.assert_array_equal(pad, A.run_hard_token_embeddings(model64, np.array([[1279]]))[0, 0])
    out = A.run_audio_features(model64, feats, mask)
    assert out.shape == (1, 188, 64)
    assert np.all(out[0, 5:] == pad) and not np.any(np.all(out[0, :5] == pad, axis=-1))
    m2 = mask.copy()
    m2[0, 57:] = False
    out2 = A.run_audio_features(model64, feats, m2)
    assert np.all(out2[0, 4:] == pad) and not np.any(np.all(out2[0, :4] == pad, axis=-1))


def test_multimodal_hard_token_ids(model64):
    """Hand-derived rule: ids in the vision range [1024, 1152) take embed_vision's hard path, ids >= 1152
    embed_audio's, all others the text table times sqrt(64) = 8 (so <start_of_image> 1022 stays text).
    hard(i) = n(n(E[i - offset]) * w_hard @ W_proj^T) with n(x) = x / sqrt(mean(x^2) + 1e-6) (final norm without
    weight), written out here with the checkpoint's tensors."""
    ck = model64.ckpt
    ids = np.array([[2, 1022, 1024, 1025, 1151, 1152, 1153, 1279]])
    got = A.run_hard_token_embeddings(model64, ids)[0]

    def n(x):
        return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-6)

    def hard(name, rows):
        w = lambda k: ck.get(f"model.{name}.{k}")  # noqa: E731
        x = n(w("embedding.weight")[rows]) * w("hard_embedding_norm.weight")
        return n(x @ w("embedding_projection.weight").T)

    text = ck.get("model.language_model.embed_tokens.weight")[[2, 1022]] * 8.0
    assert rel_err(got[:2], text) <= 1e-15
    assert rel_err(got[2:5], hard("embed_vision", [0, 1, 127])) <= 1e-12     # float64: rounding only
    assert rel_err(got[5:], hard("embed_audio", [0, 1, 127])) <= 1e-12
    # multimodal hard embeddings have RMS ~ 1 (weightless final norm): sqrt(ms / (ms + eps)) = 1 - eps / (2 ms),
    # below 1 by up to ~1e-4 here where the projection's mean square ms is small; text rows are scaled by 8
    assert np.allclose(np.sqrt(np.mean(got[2:] ** 2, -1)), 1.0, atol=1e-3)


# Forward against the reference ------------------------------------------------------------------------------
def test_logits_float64_match_lifted_reference(model64, golden):
    pos = golden.inputs["positions"].astype(np.int64)
    logits = A.run_forward(model64, golden_inputs(golden, np.float64))[0]
    assert rel_err(logits[pos], golden.out64["logits"]) <= 1e-10     # float64 vs lifted float64 reference


def test_logits_float32_match_reference(model32, golden):
    pos = golden.inputs["positions"].astype(np.int64)
    logits = A.run_forward(model32, golden_inputs(golden, np.float32))[0]
    assert rel_err(logits[pos], golden.out32["logits"]) <= 1e-4       # float32 logits tolerance (README)
    np.testing.assert_array_equal(logits.argmax(-1), golden.out32["argmax"].astype(np.int64))


def test_ple_token_part_uses_original_ids(model64, golden):
    """Per-layer inputs: the token part reads the ORIGINAL ids with every id >= vocab_size_per_layer_input (1024:
    eoi, image/audio soft tokens, eoa) mapped to row 0; the projection part reads the merged embeddings."""
    trace = {}
    A.run_forward(model64, golden_inputs(golden, np.float64), trace=trace)
    ids = golden.inputs["input_ids"][0].astype(np.int64)
    tok = trace["model.language_model.embed_tokens_per_layer"]                     # [T, L*P]
    mm = np.flatnonzero(ids >= 1024)
    assert len(mm) == 2 * 16 + 188 + 3 and np.all(tok[mm] == tok[mm[0]])          # one row for all of them
    table = model64.ckpt.get("model.language_model.embed_tokens_per_layer.weight")
    np.testing.assert_array_equal(tok[mm[0]], table[0] * 4.0)                      # sqrt(P) = sqrt(16) = 4
    # every text position reads its own original id's row (ids[0] is <bos>, 2: not row 0), so a token part
    # that read the merged ids, a clamped id or row 0 everywhere fails here
    text = np.flatnonzero(ids < 1024)
    assert ids[0] == 2 and len(set(ids[text].tolist())) > 10
    np.testing.assert_array_equal(tok[text], table[ids[text]] * 4.0)
    assert not np.array_equal(tok[0], tok[mm[0]])
    # the projection part differs between image soft tokens (different merged embeddings)
    proj = trace["model.language_model.per_layer_model_projection"]
    img = np.flatnonzero(ids == 1025)
    assert not np.allclose(proj[img[0]], proj[img[1]])


def test_text_only_prompt_equals_text_path(model64, tiny_dir):
    """No media: the multimodal forward equals the text decoder's forward exactly (float64)."""
    got = A.run_process_messages(tiny_dir, [{"role": "user", "content": "Per-layer embeddings, please."}])
    ids = got["input_ids"]
    a = A.run_forward(model64, {"input_ids": ids})
    b = A.run_text_forward(model64, ids)
    np.testing.assert_array_equal(a, b)


def test_greedy_32_tokens_match_reference(golden, tiny_dir):
    tokens = A.run_generate(tiny_dir, conversation(make_images(), make_audio()), max_new_tokens=32)
    assert tokens == [int(t) for t in golden.out32["greedy_tokens"]]


def test_media_input_forms_agree(tiny_dir, tmp_path):
    """An image given as a file path, a PIL image or a uint8 array, and audio given as a WAV file or as an array
    with its sample rate (22050 Hz, resampled to 16 kHz), give the same arrays."""
    from scipy.io import wavfile
    im = make_images()[0]
    im.save(tmp_path / "a.png")
    wave = make_audio(0.6, 22050)
    wavfile.write(tmp_path / "a.wav", 22050, wave)

    def msgs(image, audio_part):
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "audio", **audio_part},
                                             {"type": "text", "text": "?"}]}]

    outs = [A.run_process_messages(tiny_dir, msgs(image, audio_part)) for image, audio_part in (
        (str(tmp_path / "a.png"), {"audio": str(tmp_path / "a.wav")}),
        (im, {"audio": wave, "sampling_rate": 22050}),
        (np.asarray(im), {"audio": wave, "sampling_rate": 22050}))]
    for o in outs[1:]:
        for k in ("input_ids", "pixel_values", "input_features", "input_features_mask"):
            np.testing.assert_array_equal(o[k], outs[0][k])
    assert outs[0]["input_features"].shape[1] == (9600 - 513) // 160 + 1   # 0.6 s at 16 kHz = 9600 samples
