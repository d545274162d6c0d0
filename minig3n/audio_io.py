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

``load_audio(source, sampling_rate=None)`` chains them for a path or an array. **Clips longer than 30 s
are cut, with a one-line notice on stderr** (``minig3n: note: long.wav is 45.0 s long; only its first 30 s
are used``): the model reads at most 480000 samples, and the reference feature extractor cuts there too
(``truncation=True``, ``max_length=480000``), so cutting keeps minig3n equal to the reference while saying so.
A file is never read past those 30 s (plus 1 s for the resampling filter's reach, so the samples kept are
exactly those a full read would give): a long recording costs no more memory than a 31 s one.

Before a byte of samples is read, the WAV header is checked against the file (``check_wav_header``): a
RIFF size too small to hold the chunks, 0 channels, a sample rate outside [1000, 1000000] Hz, a sample
width other than 8/16/24/32/64 bits, a block size that disagrees with them, or a data chunk that claims
more bytes than the file holds (0xFFFFFFFF in a 1 KB file) are refused by name.

Bad input raises ``minig3n.errors.InputError`` naming the problem: a missing, unreadable or non-WAV file,
a directory, an empty signal, NaN or infinite samples, an array with more than 2 dimensions.

Source: the Gemma 3n processor expects 16 kHz mono float audio (``Gemma3nAudioFeatureExtractor``'s
``sampling_rate``); how a recording gets there is outside the reference (it defers to librosa or torchaudio),
so this resampler is minig3n's choice and its outputs differ slightly from other resamplers'.
Left out: compressed formats (MP3, FLAC, OGG): convert them to WAV first.
"""
from __future__ import annotations

import math
import os
import struct
import sys
import warnings

import numpy as np

from .errors import InputError
from .features import MAX_LENGTH, SAMPLING_RATE, check_waveform  # noqa: F401  (check_waveform: part of this API)

_INT_SCALE = {np.dtype("int16"): 32768.0, np.dtype("int32"): 2147483648.0}


MIN_RATE, MAX_RATE = 1000, 1_000_000       # Hz: anything outside is a corrupt header, not a recording
MAX_SECONDS = 30                            # features.MAX_LENGTH / SAMPLING_RATE: what the model reads
MARGIN_SECONDS = 1                         # read this much more, for the resampler's filter at the cut


def check_wav_header(path) -> tuple[int, int, int, int]:
    """Check a WAV file's RIFF header against the file size, reading only the chunk headers.
    Returns (channels, sample rate, bits per sample, data bytes); raises InputError naming the field."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            raise InputError(f"{path}: not a readable WAV file ({size} bytes, no RIFF/WAVE header)")
        e = "<" if head[:4] == b"RIFF" else ">"
        (riff_size,) = struct.unpack(e + "I", head[4:8])
        if riff_size < 4 + 8 + 16 + 8:
            raise InputError(f"{path}: corrupt WAV header: RIFF size {riff_size} is too small to hold a fmt and a "
                             "data chunk (at least 36 bytes)")
        pos, fmt = 12, None
        while pos + 8 <= size:
            f.seek(pos)
            cid, csize = struct.unpack(e + "4sI", f.read(8))
            body = pos + 8
            if cid == b"fmt ":
                if csize < 16:
                    raise InputError(f"{path}: corrupt WAV header: fmt chunk of {csize} bytes (expected at least 16)")
                if body + csize > size:
                    raise InputError(f"{path}: truncated WAV file: the fmt chunk ends at byte {body + csize}, the "
                                     f"file has {size} bytes")
                _tag, channels, rate, _byte_rate, block, bits = struct.unpack(e + "HHIIHH", f.read(16))
                if channels < 1:
                    raise InputError(f"{path}: corrupt WAV header: {channels} channels (expected at least 1)")
                if not MIN_RATE <= rate <= MAX_RATE:
                    raise InputError(f"{path}: corrupt WAV header: sample rate {rate} Hz (expected "
                                     f"{MIN_RATE}..{MAX_RATE} Hz)")
                if bits not in (8, 16, 24, 32, 64):
                    raise InputError(f"{path}: unsupported WAV sample width {bits} bits (8, 16, 24, 32 or 64)")
                if block != channels * bits // 8:
                    raise InputError(f"{path}: corrupt WAV header: block size {block} bytes, but {channels} "
                                     f"channel(s) x {bits} bits need {channels * bits // 8}")
                fmt = (channels, rate, bits)
            elif cid == b"data":
                if fmt is None:
                    raise InputError(f"{path}: corrupt WAV file: the data chunk comes before the fmt chunk")
                if body + csize > size:
                    raise InputError(f"{path}: corrupt or truncated WAV file: the data chunk claims {csize} bytes, "
                                     f"the file holds {size - body} after its header")
                return (*fmt, csize)
            pos = body + csize + (csize & 1)
    raise InputError(f"{path}: corrupt WAV file: no {'data' if fmt else 'fmt'} chunk in its {size} bytes")


def read_wav(path, max_seconds: float | None = MAX_SECONDS + MARGIN_SECONDS) -> tuple[np.ndarray, int]:
    """Read a WAV file: (samples float32 [A] or [A, channels] in [-1, 1], sample rate in Hz). Only the first
    ``max_seconds`` are read (None: all); the header is checked against the file first (``check_wav_header``)."""
    from scipy.io import wavfile

    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a WAV file")
    if not os.path.exists(path):
        raise InputError(f"{path}: audio file not found")
    try:
        _channels, rate, bits, _nbytes = check_wav_header(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)  # unknown chunks (LIST, ...) are fine
            rate, data = wavfile.read(path, mmap=bits != 24)          # a view of the file: nothing read yet
    except (ValueError, EOFError, OSError, struct.error) as e:
        raise InputError(f"{path}: not a readable WAV file ({e})") from None
    if max_seconds is not None:
        data = data[:int(math.ceil(max_seconds * rate))]                   # [A] or [A, channels], still a view
    if data.dtype in _INT_SCALE:
        x = data.astype(np.float32) / np.float32(_INT_SCALE[data.dtype])   # [A] or [A, channels]
    elif data.dtype == np.uint8:
        x = (data.astype(np.float32) - np.float32(128.0)) / np.float32(128.0)  # [A] or [A, channels]
    elif data.dtype.kind == "f":
        x = data.astype(np.float32)                                        # [A] or [A, channels]
    else:
        raise InputError(f"{path}: unsupported WAV sample format {data.dtype}")
    return x, int(rate)


def _is_rate(rate) -> bool:
    return not isinstance(rate, bool) and isinstance(rate, (int, np.integer)) and MIN_RATE <= rate <= MAX_RATE


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
    if not _is_rate(rate):
        raise InputError(f"sample rate must be an integer number of Hz in [{MIN_RATE}, {MAX_RATE}], got {rate!r}")
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
        channels, _, bits, nbytes = check_wav_header(what)
        seconds = nbytes // (channels * bits // 8) / rate                  # the whole file, not the part read
    else:
        x = np.asarray(source)
        rate = SAMPLING_RATE if sampling_rate is None else sampling_rate
        what = "audio array"
        if x.ndim > 2 or x.ndim == 0:
            raise InputError(f"{what} must be 1-D [samples] or 2-D [samples, channels], got shape {x.shape}")
        if x.dtype in _INT_SCALE:
            x = x.astype(np.float32) / np.float32(_INT_SCALE[x.dtype])
        seconds = x.shape[0] / rate if _is_rate(rate) else 0.0
    if x.ndim == 2 and x.shape[0] == 0:
        raise InputError(f"{what} is empty (0 samples)")
    if not _is_rate(rate):
        raise InputError(f"{what}: sample rate must be an integer number of Hz in [{MIN_RATE}, {MAX_RATE}], "
                         f"got {rate!r}")
    if seconds > MAX_SECONDS:           # cut before resampling (keeping the filter's reach), then exactly
        x = x[:int(math.ceil((MAX_SECONDS + MARGIN_SECONDS) * rate))]
    x = check_waveform(to_mono(x), what)
    y = check_waveform(resample(x, rate), what)
    if y.shape[0] > MAX_LENGTH:
        print(f"minig3n: note: {what} is {seconds:.1f} s long; only its first {MAX_SECONDS} s are used "
              f"(the model reads at most {MAX_LENGTH} samples at {SAMPLING_RATE} Hz)", file=sys.stderr)
        y = y[:MAX_LENGTH]
    return y
