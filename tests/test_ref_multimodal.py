"""Reference tier, multimodal (issue 7): minig3n's processor, merge, forward, greedy generation and trace against
transformers 5.24 ``Gemma3nProcessor`` / ``Gemma3nForConditionalGeneration`` on weights/tiny-random-gemma3n."""
import numpy as np
import pytest

from tests.adapters import multimodal as A
from tests.golden_io import rel_err
from tests.multimodal_cases import conversation, id_cases, make_audio, make_images
from tests.reference import goldens_multimodal as R

pytestmark = [pytest.mark.reference, pytest.mark.multimodal]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def conv_inputs():
    return R.reference_inputs(conversation(make_images(), make_audio()))


@pytest.mark.parametrize("case", sorted(id_cases([None] * 2, None, None)))
def test_ids_and_arrays_equal_reference_processor(tiny_dir, case):
    """Ids identical to ``AutoProcessor.apply_chat_template(..., tokenize=True, return_dict=True)`` (default
    image backend); audio features and masks identical; pixel values identical to the PIL backend's."""
    msgs = id_cases(make_images(), make_audio(), make_audio(0.5, f0=500.0))[case]
    want = R.reference_inputs(msgs, backend=None)
    got = A.run_process_messages(tiny_dir, msgs)
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(got["token_type_ids"], want["token_type_ids"])
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])
    for k in ("input_features", "input_features_mask"):
        assert (got[k] is None) == (k not in want)
        if got[k] is not None:
            np.testing.assert_array_equal(got[k], want[k])
    assert (got["pixel_values"] is None) == ("pixel_values" not in want)
    if got["pixel_values"] is not None:
        pil = R.reference_inputs(msgs, backend="pil")["pixel_values"]
        np.testing.assert_array_equal(got["pixel_values"], pil)
        # the default torchvision backend resizes with its own antialiased kernel: a few 1/255 steps apart
        assert np.abs(got["pixel_values"] - want["pixel_values"]).max() <= 8 / 255


def test_logits_live_float32_and_float64(tiny_dir, conv_inputs):
    inputs = {k: conv_inputs[k] for k in ("input_ids", "pixel_values", "input_features", "input_features_mask")}
    want32 = R.reference_logits(conv_inputs, "float32")
    want64 = R.reference_logits(conv_inputs, "float64")
    got32 = A.run_forward(A.load_model(tiny_dir, np.float32), inputs)[0]
    got64 = A.run_forward(A.load_model(tiny_dir, np.float64),
                          {**inputs, "pixel_values": inputs["pixel_values"].astype(np.float64),
                           "input_features": inputs["input_features"].astype(np.float64)})[0]
    assert rel_err(got64, want64) <= 1e-10           # float64 vs lifted float64 reference
    assert rel_err(got32, want32) <= 1e-4            # float32 logits (README)
    np.testing.assert_array_equal(got32.argmax(-1), want32.argmax(-1))


def test_text_only_conversation_live(tiny_dir):
    """A text-only prompt through the multimodal checkpoint: reference (no media) vs minig3n, float64."""
    msgs = id_cases([None] * 2, None, None)["text_only"]
    ins = R.reference_inputs(msgs)
    import torch

    from tests.reference.lift_text import lifted_text
    m = R.reference_model("float64")
    with torch.no_grad(), lifted_text():
        want = m(input_ids=torch.tensor(ins["input_ids"])).logits[0].numpy()
    model = A.load_model(tiny_dir, np.float64)
    assert rel_err(A.run_forward(model, {"input_ids": ins["input_ids"]})[0], want) <= 1e-10
    assert rel_err(A.run_text_forward(model, ins["input_ids"])[0], want) <= 1e-10


def test_greedy_32_tokens_live(tiny_dir, conv_inputs):
    want = R.reference_greedy(conv_inputs, 32)
    got = A.run_generate(tiny_dir, conversation(make_images(), make_audio()), max_new_tokens=32)
    assert got == want


def test_trace_compare_float64(tiny_dir, tmp_path, capsys):
    """``minig3n trace`` and the reference tracer on the same conversation (two images, one audio clip):
    ``minig3n compare`` exits 0 at rtol 1e-10 in float64 over every common tensor (towers included)."""
    from scipy.io import wavfile

    from minig3n.compare import compare_files
    from tests.reference import trace_reference
    imgs = []
    for k, im in enumerate(make_images()):
        imgs += ["--image", str(tmp_path / f"p{k}.png")]
        im.save(imgs[-1])
    wav = tmp_path / "a.wav"
    wavfile.write(wav, 16000, make_audio())
    common = ["--model", str(tiny_dir), "--chat", "What do you see and hear?", *imgs, "--audio", str(wav),
              "--dtype", "float64"]
    assert A.run_cli(["trace", *common, "--out", str(tmp_path / "ours.safetensors")]) == 0
    assert trace_reference.main([*common, "--out", str(tmp_path / "ref.safetensors")]) == 0
    code = compare_files(tmp_path / "ref.safetensors", tmp_path / "ours.safetensors", rtol=1e-10)
    report = capsys.readouterr().out
    assert code == 0, report
    for name in ("model.vision_tower.timm_model.blocks.2.1", "model.audio_tower.conformer.0", "logits"):
        assert name in report
    assert "not compared" not in report          # both traces hold the same names
