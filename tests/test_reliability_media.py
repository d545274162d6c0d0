"""Bounded media: WAV headers checked against the file before any sample is read, clips over 30 s cut with
a one-line notice, images over 50 megapixels refused before decoding, directories named as directories,
URLs refused as URLs. Each bad input: exit 2, one line naming the file and the field."""
import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from scipy.io import wavfile

from minig3n.audio_io import load_audio, resample
from minig3n.errors import InputError
from minig3n.image import MAX_PIXELS, preprocess_image
from minig3n.processor import load_audio_features, load_images
from tests.conftest import TINY
from tests.reliability import assert_one_line_error, cli

pytestmark = pytest.mark.multimodal


def wav_bytes(channels=1, rate=16000, bits=16, data=b"\0\0" * 100, riff_size=None, data_size=None, block=None):
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * bits // 8,
                      channels * bits // 8 if block is None else block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack(
        "<I", len(data) if data_size is None else data_size) + data
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


BAD_WAVS = [
    ("channels 0", dict(channels=0), "0 channels"),
    ("RIFF size 10", dict(riff_size=10), "RIFF size 10 is too small"),
    ("data chunk 0xFFFFFFFF", dict(data_size=0xFFFFFFFF), "data chunk claims 4294967295 bytes"),
    ("sample rate 1 Hz", dict(rate=1), "sample rate 1 Hz"),
    ("sample rate 0", dict(rate=0), "sample rate 0 Hz"),
    ("12-bit samples", dict(bits=12), "sample width 12 bits"),
    ("block size", dict(block=7), "block size 7 bytes"),
]


@pytest.mark.parametrize("case", BAD_WAVS, ids=[c[0] for c in BAD_WAVS])
def test_bad_wav_header_one_line(capsys, tmp_path, case):
    _, fields, words = case
    f = tmp_path / "a.wav"
    f.write_bytes(wav_bytes(**fields))
    tracemalloc.start()
    with pytest.raises(InputError, match=words) as e:
        load_audio(f)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(f) in str(e.value) and peak < 10 * 2 ** 20        # refused from the header: nothing allocated
    code, _, err = cli(capsys, "generate", "--model", TINY, "--chat", "Hi", "--audio", f, "--max-new-tokens", 1)
    assert_one_line_error(code, err, "generate", f, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


@pytest.mark.parametrize("data,words", [(wav_bytes()[:30],
                                         "truncated WAV file: the fmt chunk ends at byte 36, the file has 30"),
                                        (wav_bytes()[:40], "no data chunk"), (b"RIFF", "no RIFF/WAVE header"),
                                        (b"", "no RIFF/WAVE header"), (b"x" * 30, "no RIFF/WAVE header")],
                         ids=["30-byte file", "40-byte file", "4-byte file", "empty file", "30 bytes of text"])
def test_short_wav_files(tmp_path, data, words):
    f = tmp_path / "a.wav"
    f.write_bytes(data)
    with pytest.raises(InputError, match=words):
        load_audio(f)


def test_audio_directory(capsys, tmp_path):
    (tmp_path / "a.wav").mkdir()
    code, _, err = cli(capsys, "generate", "--model", TINY, "--chat", "Hi", "--audio", tmp_path / "a.wav")
    assert_one_line_error(code, err, "generate", tmp_path / "a.wav", "is a directory")


def test_long_clip_cut_exactly_as_a_full_read(tmp_path, capsys):
    """44.1 kHz, 40 s: only 31 s are read, and the 480000 samples kept equal those of resampling the whole
    clip and then cutting (the 1 s margin covers the resampling filter)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(44100 * 40) * 3000).astype(np.int16)
    wavfile.write(tmp_path / "long.wav", 44100, x)
    y = load_audio(tmp_path / "long.wav")
    full = resample(x.astype(np.float32) / np.float32(32768.0), 44100)[:480000]
    np.testing.assert_array_equal(y, full)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "long.wav is 40.0 s long; only its first 30 s are used" in err[0]
    y2 = load_audio(x[:44100 * 40], sampling_rate=44100)       # arrays are cut the same way, with the notice
    np.testing.assert_allclose(y2, y, atol=1e-7)
    assert "audio array is 40.0 s long" in capsys.readouterr().err


def test_clip_of_30s_has_no_notice(tmp_path, capsys):
    wavfile.write(tmp_path / "a.wav", 16000, np.zeros(480000, np.int16))
    assert load_audio(tmp_path / "a.wav").shape == (480000,)
    assert capsys.readouterr().err == ""


def _png_header_only(width, height) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit grey) and whose pixel data is one empty IDAT: a few
    dozen bytes that a decoder would expand to width * height bytes."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_huge_png_refused_before_decoding(capsys, tmp_path):
    f = tmp_path / "big.png"
    f.write_bytes(_png_header_only(12000, 12000))
    tracemalloc.start()
    with pytest.raises(InputError, match=r"12000 x 12000 = 144.0 megapixels; minig3n reads at most 50 megapixels"):
        load_images([str(f)])
    assert tracemalloc.get_traced_memory()[1] < 10 * 2 ** 20
    tracemalloc.stop()
    code, _, err = cli(capsys, "generate", "--model", TINY, "--chat", "Hi", "--image", f)
    assert_one_line_error(code, err, "generate", f, "megapixels")


def test_pixel_cap_boundary(tmp_path):
    """Exactly MAX_PIXELS passes the cap (and then fails to decode the empty pixel data, by name); one more
    row is refused by the cap."""
    w = 10_000
    h = MAX_PIXELS // w
    f = tmp_path / "edge.png"
    f.write_bytes(_png_header_only(w, h))
    with pytest.raises(InputError, match="cannot read image file"):
        preprocess_image(str(f))
    f.write_bytes(_png_header_only(w, h + 1))
    with pytest.raises(InputError, match="megapixels"):
        preprocess_image(str(f))


def test_image_directory(capsys, tmp_path):
    (tmp_path / "pic.png").mkdir()
    code, _, err = cli(capsys, "generate", "--model", TINY, "--chat", "Hi", "--image", tmp_path / "pic.png")
    assert_one_line_error(code, err, "generate", tmp_path / "pic.png", "is a directory")


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "HTTP://x/y.png", "file:///tmp/x.png"])
def test_image_and_audio_urls_refused_as_urls(url):
    """Kills the mutant that drops the URL check: without it the message would be 'image file not found'."""
    with pytest.raises(InputError, match=r"URLs are not read, give a local file path"):
        load_images([url])
    with pytest.raises(InputError, match=r"URLs are not read, give a local WAV file path"):
        load_audio_features([{"audio": url.replace(".png", ".wav")}])


def test_pil_image_over_the_cap():
    from PIL import Image
    im = Image.new("1", (10_000, 5_001))           # 1 bit a pixel: 6 MB to build
    with pytest.raises(InputError, match="10000 x 5001"):
        preprocess_image(im)


def test_in_memory_png_still_reads(tmp_path):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(buf, "PNG")
    (tmp_path / "ok.png").write_bytes(buf.getvalue())
    x = preprocess_image(str(tmp_path / "ok.png"))
    assert x.shape == (3, 768, 768) and abs(float(x[0, 0, 0]) - 10 / 255) < 1e-7
