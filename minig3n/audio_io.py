"""Audio input: WAV files and NumPy arrays -> mono float32 waveforms at 16 kHz, ready for ``features``.

The idea: the model only ever sees 16 kHz mono samples in [-1, 1]. This module does the three chores that
get a recording there, each a small function:

* ``read_wav(path)``: reads a WAV file with ``scipy.io.wavfile`` and scales integer PCM to [-1, 1]
  (int16 / 32768, int32 / 2147483648, uint8 as (x - 128) / 128; float files are taken as they are);
* ``to_mono(x)``: averages the channels of a [samples, channels] array (stereo is mixed down, not
  left-channel only);
* ``resample(x, rate)``: polyphase resampling to 16 kHz with ``scipy.signal.resample_poly(x, up, down)``,
  ``up / down = 16000 / rate`` in lowest terms (a Kaiser-windowed FIR anti-aliasing filter, scipy's
  default ``window=('kaiser', 5.0)``). A 16 kHz input is returned unchanged.

``load_audio(source, sampling_rate=None)`` chains them for a path or an array. Length limits are *not*
applied here: ``features.extract_features`` truncates to 480000 samples (30 s) exactly as the reference
feature extractor does (``truncation=True``, ``max_length=480000``), so audio longer than 30 s is cut, not
rejected.

Bad input raises ``minig3n.errors.InputError`` naming the problem: a missing, unreadable or non-WAV file,
an empty signal, NaN or infinite samples, an array with more than 2 dimensions.

Source: the Gemma 3n processor expects 16 kHz mono float audio (``Gemma3nAudioFeatureExtractor``'s
``sampling_rate``); how a recording gets there is outside the reference (it defers to librosa or torchaudio),
so this resampler is minig3n's choice and its outputs differ slightly from other resamplers'.
Left out: compressed formats (MP3, FLAC, OGG): convert them to WAV first.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from .errors import InputError
from .features import SAMPLING_RATE, check_waveform  # noqa: F401  (check_waveform: part of this API)

_INT_SCALE = {np.dtype("int16"): 32768.0, np.dtype("int32"): 2147483648.0}


def read_wav(path) -> tuple[np.ndarray, int]:
    """Read a WAV file: (samples float32 [A] or [A, channels] in [-1, 1], sample rate in Hz)."""
    from scipy.io import wavfile

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: audio file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)  # unknown chunks (LIST, ...) are fine
            rate, data = wavfile.read(path)
    except (ValueError, EOFError, OSError) as e:
        raise InputError(f"{path}: not a readable WAV file ({e})") from None
    if data.dtype in _INT_SCALE:
        x = data.astype(np.float32) / np.float32(_INT_SCALE[data.dtype])   # [A] or [A, channels]
    elif data.dtype == np.uint8:
        x = (data.astype(np.float32) - np.float32(128.0)) / np.float32(128.0)  # [A] or [A, channels]
    elif data.dtype.kind == "f":
        x = data.astype(np.float32)                                        # [A] or [A, channels]
    else:
        raise InputError(f"{path}: unsupported WAV sample format {data.dtype}")
    return x, int(rate)


def to_mono(x: np.ndarray) -> np.ndarray:
    """Mix [A, channels] down to [A] by averaging the channels; a 1-D array is returned as is."""
    x = np.asarray(x)
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise InputError(f"audio array must be 1-D [samples] or 2-D [samples, channels], got shape {x.shape}")
    return x.mean(axis=1, dtype=np.float64).astype(np.float32)              # [A]


def resample(x: np.ndarray, rate: int, target: int = SAMPLING_RATE) -> np.ndarray:
    """Polyphase resampling from ``rate`` Hz to ``target`` Hz (float32 out).   [A] -> [A * target / rate]"""
    if int(rate) <= 0:
        raise InputError(f"sample rate must be a positive number of Hz, got {rate}")
    x = np.asarray(x, dtype=np.float32)
    if int(rate) == target:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(target), int(rate))
    return resample_poly(x.astype(np.float64), target // g, int(rate) // g).astype(np.float32)




def load_audio(source, sampling_rate: int | None = None) -> np.ndarray:
    """A WAV path, or an array with its ``sampling_rate`` (default 16000), -> mono float32 [A] at 16 kHz.

    Arrays: [samples] or [samples, channels]; integer arrays are taken as PCM and scaled like WAV samples.
    """
    if isinstance(source, (str, os.PathLike)):
        x, rate = read_wav(source)
        what = os.fspath(source)
    else:
        x = np.asarray(source)
        rate = SAMPLING_RATE if sampling_rate is None else sampling_rate
        what = "audio array"
        if x.ndim > 2 or x.ndim == 0:
            raise InputError(f"{what} must be 1-D [samples] or 2-D [samples, channels], got shape {x.shape}")
        if x.dtype in _INT_SCALE:
            x = x.astype(np.float32) / np.float32(_INT_SCALE[x.dtype])
    if x.ndim == 2 and x.shape[0] == 0:
        raise InputError(f"{what} is empty (0 samples)")
    x = check_waveform(to_mono(x), what)
    return check_waveform(resample(x, rate), what)
