"""Audio input: WAV files (int16, int32, float; mono, stereo), resampling to 16 kHz, bad input."""
import numpy as np
import pytest
from scipy.io import wavfile

from minig3n.errors import InputError
from tests.adapters.audio import run_extract_features, run_load_audio, run_resample

pytestmark = pytest.mark.audio


def _tone(rate, seconds, hz=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * hz * t)


def test_int16_stereo_is_scaled_and_mixed_down(tmp_path):
    """int16 PCM is divided by 32768; the two channels are averaged: (a + b) / 2."""
    a = np.array([0, 16384, -32768, 32767, 100], np.int16)
    b = np.array([0, -16384, -32768, 1, 300], np.int16)
    wavfile.write(tmp_path / "s.wav", 16000, np.stack([a, b], axis=1))
    got = run_load_audio(tmp_path / "s.wav")
    want = (a.astype(np.float64) + b) / 2 / 32768
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


def test_int32_and_float_files(tmp_path):
    x = _tone(16000, 0.1)
    wavfile.write(tmp_path / "i32.wav", 16000, (x * 2 ** 31).astype(np.int32))
    wavfile.write(tmp_path / "f32.wav", 16000, x.astype(np.float32))
    np.testing.assert_allclose(run_load_audio(tmp_path / "i32.wav"), x, atol=1e-7)
    np.testing.assert_array_equal(run_load_audio(str(tmp_path / "f32.wav")), x.astype(np.float32))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_the_pitch(tmp_path, rate):
    """Derived by hand: 1 s at any rate becomes 16000 samples at 16 kHz, and a 440 Hz tone stays at
    440 Hz: its FFT peak over 1 s of 16 kHz samples sits in bin 440 (1 Hz bins)."""
    wavfile.write(tmp_path / "t.wav", rate, (_tone(rate, 1.0) * 32767).astype(np.int16))
    y = run_load_audio(tmp_path / "t.wav")
    assert y.shape == (16000,)
    assert int(np.argmax(np.abs(np.fft.rfft(y)))) == 440


def test_16k_is_unchanged():
    x = _tone(16000, 0.05).astype(np.float32)
    np.testing.assert_array_equal(run_resample(x, 16000), x)
    np.testing.assert_array_equal(run_load_audio(x), x)


def test_array_with_rate_and_channels():
    x = np.stack([_tone(8000, 0.5), _tone(8000, 0.5)], axis=1)      # [A, 2] at 8 kHz
    y = run_load_audio(x, sampling_rate=8000)
    assert y.shape == (8000,) and y.dtype == np.float32


def test_longer_than_30s_is_cut_with_a_notice(tmp_path, capsys):
    """A clip over 30 s is cut to 480000 samples with one line on stderr (the reference's feature extractor
    cuts there too: truncation=True, max_length=480000): (480000 - 513) // 160 + 1 = 2997 frames. The
    feature extractor alone still truncates a long array as the reference does."""
    wavfile.write(tmp_path / "long.wav", 16000, np.zeros(16000 * 31, np.int16) + 3)
    y = run_load_audio(tmp_path / "long.wav")
    assert y.shape == (480000,)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"minig3n: note: {tmp_path / 'long.wav'} is 31.0 s long; only its first 30 s are used "
                   "(the model reads at most 480000 samples at 16000 Hz)"]
    feats, mask = run_extract_features(np.zeros(16000 * 31, np.float32))
    assert feats.shape == (1, 2997, 128) and mask.all()


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        run_load_audio(tmp_path / "missing.wav")
    (tmp_path / "text.wav").write_text("this is not audio")
    with pytest.raises(InputError, match="not a readable WAV"):
        run_load_audio(tmp_path / "text.wav")
    wavfile.write(tmp_path / "empty.wav", 16000, np.zeros(0, np.int16))
    with pytest.raises(InputError, match="empty"):
        run_load_audio(tmp_path / "empty.wav")
    wavfile.write(tmp_path / "nan.wav", 16000, np.array([0.0, np.nan, 0.5], np.float32))
    with pytest.raises(InputError, match="NaN"):
        run_load_audio(tmp_path / "nan.wav")


@pytest.mark.parametrize("bad, kw, words", [
    (np.zeros((2, 3, 4)), {}, "shape"),
    (np.zeros(0), {}, "empty"),
    (np.array([0.1, np.inf]), {}, "NaN or infinite"),
    (np.zeros(100), {"sampling_rate": 0}, "sample rate"),
])
def test_bad_arrays(bad, kw, words):
    with pytest.raises(InputError, match=words):
        run_load_audio(bad, **kw)
