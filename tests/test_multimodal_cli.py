"""``minig3n generate`` / ``minig3n trace`` with --image / --audio: output, trace names, and one-line errors with
exit code 2 for media problems (count mismatch, several target clips, unreadable files)."""
import json

import numpy as np
import pytest

from tests.adapters import multimodal as A
from tests.multimodal_cases import make_audio, make_images

pytestmark = pytest.mark.multimodal


@pytest.fixture
def media(tmp_path):
    """Two PNGs drawn with PIL and a WAV (int16 at 22050 Hz, resampled to 16 kHz on reading), a few KB each."""
    from scipy.io import wavfile
    paths = []
    for k, im in enumerate(make_images()):
        paths.append(tmp_path / f"pic{k}.png")
        im.save(paths[-1])
    wav = tmp_path / "tone.wav"
    wavfile.write(wav, 22050, (make_audio(0.6, 22050) * 32767).astype(np.int16))
    return {"images": [str(p) for p in paths], "audio": str(wav), "dir": tmp_path}


def run(capsys, *argv):
    code = A.run_cli(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_chat_two_images_one_audio(capsys, tiny_dir, media):
    code, out, err = run(capsys, "generate", "--model", str(tiny_dir), "--chat", "Compare them.", "--image",
                         media["images"][0], "--image", media["images"][1], "--audio", media["audio"],
                         "--max-new-tokens", "4")
    assert code == 0, err
    # user turn: 2 x (16 image soft tokens + boi + eoi) + (188 audio soft tokens + boa + eoa) + text and template
    n = int(err.strip().splitlines()[-1].split("prompt tokens: ")[1].split(",")[0])
    assert n > 2 * 18 + 190


def test_generate_prompt_with_placeholders(capsys, tiny_dir, media):
    code, out, err = run(capsys, "generate", "--model", str(tiny_dir), "--prompt",
                         "First <image_soft_token> then <audio_soft_token>:", "--image", media["images"][0],
                         "--audio", media["audio"], "--max-new-tokens", "3")
    assert code == 0, err


@pytest.mark.parametrize("argv,msg", [
    (["--prompt", "no placeholder", "--image", "IMG0"], "0 <image_soft_token> placeholder(s) but 1 image"),
    (["--prompt", "<image_soft_token><image_soft_token>", "--image", "IMG0"],
     "2 <image_soft_token> placeholder(s) but 1 image"),
    (["--prompt", "hear <audio_soft_token>"], "1 <audio_soft_token> placeholder(s) but 0 audio"),
    (["--chat", "Hi", "--audio", "WAV", "--audio", "WAV"], "more than one target audio clip"),
    (["--prompt", "<audio_soft_token><audio_soft_token>", "--audio", "WAV", "--audio", "WAV"],
     "more than one target audio clip"),
    (["--chat", "Hi", "--image", "MISSING"], "image file not found"),
    (["--chat", "Hi", "--image", "NOTIMG"], "cannot read image file"),
    (["--chat", "Hi", "--audio", "NOTWAV"], "not a readable WAV file"),
    (["--chat", "Hi", "--audio", "MISSING"], "audio file not found"),
])
def test_generate_media_errors(capsys, tiny_dir, media, argv, msg):
    bad = media["dir"] / "bad.png"
    bad.write_text("not an image")
    notwav = media["dir"] / "bad.wav"
    notwav.write_text("not a wav")
    subst = {"IMG0": media["images"][0], "WAV": media["audio"], "MISSING": str(media["dir"] / "missing.file"),
             "NOTIMG": str(bad), "NOTWAV": str(notwav)}
    argv = [subst.get(a, a) for a in argv]
    code, out, err = run(capsys, "generate", "--model", str(tiny_dir), *argv, "--max-new-tokens", "2")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minig3n generate: error: ") and msg in lines[0], err


def test_trace_with_media_names_towers(capsys, tiny_dir, media, tmp_path):
    from minig3n.checkpoint import load_safetensors
    out_file = tmp_path / "trace.safetensors"
    code, out, err = run(capsys, "trace", "--model", str(tiny_dir), "--chat", "Compare.", "--image",
                         media["images"][0], "--image", media["images"][1], "--audio", media["audio"],
                         "--out", str(out_file))
    assert code == 0, err
    tensors, meta = load_safetensors(out_file)
    order = json.loads(meta["order"])
    for name in ("model.vision_tower.timm_model.blocks.2.1", "model.vision_tower.timm_model.msfa",
                 "model.embed_vision", "model.audio_tower.conformer.0", "model.audio_tower", "model.embed_audio",
                 "model.language_model.layers.3", "logits"):
        assert name in order
    assert tensors["model.vision_tower.timm_model.blocks.2.1"].shape[0] == 2    # both images, batch axis kept
    assert tensors["model.embed_vision"].shape == (2, 16, 64)
    assert order.index("model.embed_audio") < order.index("model.language_model.layers.0")
    ids = json.loads(meta["ids"])
    assert tensors["logits"].shape == (len(ids), 1280) and ids.count(1025) == 32 and ids.count(1153) == 188


def test_trace_media_errors(capsys, tiny_dir, media, tmp_path):
    code, out, err = run(capsys, "trace", "--model", str(tiny_dir), "--ids", "2,5", "--image", media["images"][0],
                         "--out", str(tmp_path / "t.safetensors"))
    assert code == 2 and "--ids cannot be combined" in err
    code, out, err = run(capsys, "trace", "--model", str(tiny_dir), "--prompt", "x <image_soft_token>",
                         "--out", str(tmp_path / "t.safetensors"))
    assert code == 2 and "1 <image_soft_token> placeholder(s) but 0 image" in err
