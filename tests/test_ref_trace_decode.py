"""``minig3n trace --decode-steps`` against the reference's cached decoding (``past_key_values``), step by step, on
the trained nano-gemma3n (Gemma3nForCausalLM) and the tiny multimodal checkpoint; hard-token ids (image / audio
ids without a tower) through the embedders; the merged inputs_embeds and the processor outputs in both traces."""
import json

import numpy as np
import pytest

from minig3n.cli import main
from minig3n.compare import compare, first_exceeding, load_trace
from tests.reference.trace_reference import main as ref_main

pytestmark = [pytest.mark.reference, pytest.mark.text]

NANO_IDS = ",".join(["2"] + ["2191,1044,1029,1030,1039,2203,1047,1050,1029,1036,1038"] * 5 + ["1044,1029"])  # 58


def _both(tmp_path, model, ids, steps, dtype, extra=()):
    a, b = tmp_path / f"ref_{dtype}.safetensors", tmp_path / f"ours_{dtype}.safetensors"
    common = ["--model", str(model), "--ids", ids, "--dtype", dtype, "--decode-steps", str(steps), *extra]
    assert ref_main([*common, "--out", str(a)]) == 0
    assert main(["trace", *common, "--out", str(b)]) == 0
    return (*load_trace(a), *load_trace(b))


@pytest.mark.parametrize("which", ["nano", "tiny"])
def test_decode_steps_agree_with_reference_cache(tmp_path, one_torch_thread, which, capsys):
    """Prefill + 12 cached greedy steps, the steps crossing the sliding window (nano: 58 ids, window 64; tiny: 12
    ids, window 16) and running the KV-shared layers on the producers' cached keys: in float64 every name of every
    step within 1e-10 (the per-step maximum is printed), the same greedy ids fed; float32 within the float32
    preset with the same ids."""
    from tests.conftest import TINY, WEIGHTS
    tiny_ids = "2,17,5,40,41,42,43,44,45,46,47,48"
    model, ids = (WEIGHTS / "nano-gemma3n", NANO_IDS) if which == "nano" else (TINY, tiny_ids)
    ta, ma, tb, mb = _both(tmp_path, model, ids, 12, "float64")
    assert ma["decoded_ids"] == mb["decoded_ids"] and len(mb["decoded_ids"]) == 12
    assert list(ta) == list(tb)
    rows = compare(ta, tb, preset="float64")
    per_step = {}
    for r in rows:
        step = r["name"].split(".")[0] if r["name"].startswith("step") else "prefill"
        per_step[step] = max(per_step.get(step, 0.0), r["rel"])
    print(which, "float64 worst rel per step:", {k: f"{v:.1e}" for k, v in per_step.items()})
    assert len(per_step) == 13 and first_exceeding(rows) is None
    assert any(n.startswith("step12.") and n.endswith("layers.0.self_attn") for n in tb)
    ta, ma, tb, mb = _both(tmp_path, model, ids, 12, "float32")
    # float32 through 12 cached steps: the project's float32 bound for a chain of modules, sqrt(depth) * 1e-5
    # (tests/golden_io.tol32_whole_model),
    # rather than the per-module 1e-5; measured 1.7e-6 (nano) and 9.8e-6 (tiny)
    rows = compare(ta, tb, rtol=4e-5)
    print(which, "float32 worst rel:", f"{max(r['rel'] for r in rows):.1e}", "ids", mb["decoded_ids"])
    assert ma["decoded_ids"] == mb["decoded_ids"] and first_exceeding(rows) is None


def test_hard_token_ids_trace_through_the_embedders(tmp_path, one_torch_thread):
    """Ids in the vision and audio ranges of the tiny multimodal checkpoint (1024 <end_of_image>, 1030, 1152
    <end_of_audio>, 1200) without any tower: both traces hold the merged inputs_embeds, whose rows at those ids
    are the embedders' hard-path outputs (not embed_tokens rows), and agree to 1e-10 in float64, 3 steps on."""
    ids = "2,17,1024,5,1030,1152,9,1200,30"
    ta, ma, tb, mb = _both(tmp_path, __import__("tests.conftest", fromlist=["TINY"]).TINY, ids, 3, "float64")
    name = "model.language_model.inputs_embeds"
    assert name in ta and name in tb and list(ta) == list(tb)
    pos = [2, 4, 5, 7]
    assert np.abs(tb[name][pos] - tb["model.language_model.embed_tokens"][pos]).max() > 0.1
    assert first_exceeding(compare(ta, tb, preset="float64")) is None


def test_multimodal_trace_holds_processor_outputs(tmp_path, one_torch_thread):
    """--chat with two images and one clip: input_ids, pixel_values, input_features and its mask lead both traces
    and are identical (the default torchvision image backend on both sides), 2 decode steps after."""
    from scipy.io import wavfile

    from tests.conftest import TINY
    from tests.multimodal_cases import make_audio, make_images
    imgs = []
    for k, im in enumerate(make_images()):
        imgs += ["--image", str(tmp_path / f"p{k}.png")]
        im.save(imgs[-1])
    wavfile.write(tmp_path / "a.wav", 16000, make_audio())
    common = ["--model", str(TINY), "--chat", "What do you see and hear?", *imgs, "--audio", str(tmp_path / "a.wav"),
              "--dtype", "float64", "--decode-steps", "2"]
    assert ref_main([*common, "--out", str(tmp_path / "r.safetensors")]) == 0
    assert main(["trace", *common, "--out", str(tmp_path / "o.safetensors")]) == 0
    ta, ma = load_trace(tmp_path / "r.safetensors")
    tb, mb = load_trace(tmp_path / "o.safetensors")
    assert list(tb)[:4] == ["input_ids", "pixel_values", "input_features", "input_features_mask"]
    assert list(ta) == list(tb) and ma["decoded_ids"] == mb["decoded_ids"]
    for k in list(tb)[:4]:
        np.testing.assert_array_equal(ta[k], tb[k])
    assert first_exceeding(compare(ta, tb, preset="float64")) is None
    assert json.dumps(mb["decoded_ids"])


@pytest.mark.parametrize("which", ["nano", "tiny"])
def test_fine_names_agree_with_reference(tmp_path, one_torch_thread, which):
    """``--fine``: q, k, v after their norms and RoPE, the pre-activation gate (mlp.gate_proj) and the AltUp streams
    after magnitude matching, caught inside the reference's forward (trace_reference._inner_values), agree in
    float64 to 1e-10 in the prefill and 2 cached steps; KV-shared layers record q but no k / v of their own."""
    from tests.conftest import TINY, WEIGHTS
    model, ids = (WEIGHTS / "nano-gemma3n", NANO_IDS) if which == "nano" else (TINY, "2,17,5,40,41,42,1030,44")
    ta, ma, tb, mb = _both(tmp_path, model, ids, 2, "float64", ["--fine"])
    assert list(ta) == list(tb)
    X = "model." if which == "nano" else "model.language_model."
    last = max(int(n.split(".")[-1]) for n in tb if n.startswith(f"{X}layers.") and n.split(".")[-1].isdigit())
    for name in (f"{X}altup_streams", f"{X}layers.0.self_attn.q", f"{X}layers.0.self_attn.k",
                 f"{X}layers.0.self_attn.v", f"{X}layers.0.mlp.gate_proj", f"step2.{X}layers.{last}.self_attn.q"):
        assert name in tb, name
    assert f"{X}layers.{last}.self_attn.k" not in tb          # the last layer is KV-shared in both checkpoints
    rows = compare(ta, tb, preset="float64")
    assert first_exceeding(rows) is None
    print(which, "fine names, worst float64 rel", f"{max(r['rel'] for r in rows):.1e}", len(rows), "tensors")


def test_default_image_backend_gives_the_reference_default_greedy_tokens(one_torch_thread):
    """minig3n's default image backend is the reference's default (torchvision): 32 greedy tokens of the two-image +
    audio conversation equal the reference's ``generate`` on ``AutoProcessor``'s default inputs, and the pixel
    values are identical; the PIL backend's pixels differ (by up to a few 1/255)."""
    from minig3n.generate import generate
    from minig3n.processor import Processor
    from tests.conftest import TINY
    from tests.multimodal_cases import conversation, make_audio, make_images
    from tests.reference import goldens_multimodal as R
    msgs = conversation(make_images(), make_audio())
    want_inputs = R.reference_inputs(msgs, backend=None)
    got = Processor.from_dir(TINY).apply_chat_template(msgs)
    np.testing.assert_array_equal(got.pixel_values, want_inputs["pixel_values"])
    pil = Processor.from_dir(TINY, "pil").apply_chat_template(msgs)
    assert np.abs(pil.pixel_values - want_inputs["pixel_values"]).max() > 0
    want = R.reference_greedy(want_inputs, 32)
    assert [t for t, _ in generate(TINY, messages=msgs, max_new_tokens=32)] == want
