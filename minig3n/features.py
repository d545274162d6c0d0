"""USM log-mel features: 16 kHz waveforms -> [frames, 128] log-mel spectrograms and a frame validity mask.

The idea: the audio encoder does not see samples but a log-magnitude mel spectrogram, one 128-bin row
every 10 ms. Each row comes from a 32 ms window of samples that is pre-emphasised (a first difference that
boosts high frequencies), multiplied by a Hann window, zero-padded to 1024 points and Fourier transformed;
the magnitudes (not powers) of the 513 FFT bins are pooled by 128 triangular mel filters and the natural
log is taken with a floor. A batch is first padded with zeros to a common length (a multiple of 128
samples), and a boolean mask says which frames start on a real sample.

Every constant, with where it comes from (defaults of ``Gemma3nAudioFeatureExtractor``, which equal the
hub ``preprocessor_config.json``):

======================  ==========  =====================================================================
SAMPLING_RATE           16000 Hz    the only rate the model knows; resample first (``minig3n.audio_io``)
FRAME_LENGTH            512         round(16000 * 32 ms / 1000): samples per analysis window
HOP_LENGTH              160         round(16000 * 10 ms / 1000): samples between window starts
FRAME_FOR_UNFOLD        513         FRAME_LENGTH + 1: each window is cut one sample longer (see below)
FFT_LENGTH              1024        next power of two >= 512, doubled ("fft_overdrive"): 513 bins, 15.625 Hz
PREEMPHASIS             0.97        HTK flavour, applied inside each window (below)
MIN_FREQUENCY           125 Hz      lowest mel filter edge
MAX_FREQUENCY           7600 Hz     highest mel filter edge
MEL_FLOOR               1e-5        log(max(mel, 1e-5)): silence becomes ln(1e-5) = -11.512925
MAX_LENGTH              480000      30 s: longer audio is truncated (``truncation=True``, the default)
PAD_TO_MULTIPLE_OF      128         padded lengths are rounded up to a multiple of 128 samples
======================  ==========  =====================================================================

The steps, exactly as the reference computes them (float32 unless said otherwise; NumPy >= 2):

1. Padding (``SequenceFeatureExtractor.pad``): each waveform is truncated to ``max_length`` rounded up to
   a multiple of ``pad_to_multiple_of`` (if ``truncation``), then zero-padded on the right to the target
   length: the longest waveform in the batch (``padding="longest"``) or ``max_length``
   (``padding="max_length"``), rounded up to a multiple of ``pad_to_multiple_of``. The sample mask is 1 on
   real samples. Inputs become float32 (the reference casts float64 to float32; minig3n casts every dtype).
2. Optional dither: ``x += dither * N(0, 1)`` drawn per waveform from ``np.random.RandomState(seed)``'s
   ``randn`` (the reference draws from NumPy's global legacy generator, so ``np.random.seed(s)`` there
   equals ``seed=s`` here). Off by default (``dither=0.0``).
3. Framing: windows of 513 samples every 160 samples, no centring, no reflection:
   ``num_frames = (N_padded - 513) // 160 + 1`` (zero frames when the audio is shorter than 513 samples;
   30 s give 2997 frames).
4. HTK pre-emphasis per window u (513 samples): ``f[0] = u[0] * (1 - 0.97)``,
   ``f[n] = u[n] - 0.97 u[n-1]`` for n = 1..511. So f has 512 samples and ``u[512]`` is never read.
5. Window: periodic Hann ``w[n] = 0.5 (1 - cos(2 pi n / 512))``, n = 0..511, computed in float32.
6. ``|rfft(f * w, n=1024)|``: zero-padded at the end; magnitude, not power. NumPy >= 2 runs a float32 FFT
   (complex64), like the reference under the same NumPy.
7. Mel filterbank [513, M] in float64: HTK mel ``m(f) = 2595 log10(1 + f / 700)``, M + 2 points equally
   spaced in mel from m(125) to m(7600), back to Hz; triangles with peak 1 built in Hz, no area
   normalisation. The bin frequencies ``k * 16000 / 1024`` are float32.
8. ``log(max(|X| @ fb, 1e-5))`` in float64 (the filterbank is float64), then cast to float32.
9. Frame mask: ``frame i is valid iff sample 160 i is real`` (its *first* sample), for i < num_frames.

Source: transformers 5.24 ``feature_extraction_gemma3n.py`` and ``feature_extraction_sequence_utils.py``.
Left out: per-bin mean/stddev normalisation (None in every Gemma 3n config), ``input_scale_factor`` (1.0),
left padding, the non-HTK pre-emphasis, and sample rates other than 16 kHz (``minig3n.audio_io`` resamples).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .errors import InputError

SAMPLING_RATE = 16_000
FRAME_LENGTH = 512
HOP_LENGTH = 160
FRAME_FOR_UNFOLD = FRAME_LENGTH + 1
FFT_LENGTH = 1024
PREEMPHASIS = 0.97
MIN_FREQUENCY = 125.0
MAX_FREQUENCY = 7600.0
MEL_FLOOR = 1e-5
MAX_LENGTH = 480_000
PAD_TO_MULTIPLE_OF = 128
N_MELS = 128


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_mels: int = N_MELS) -> np.ndarray:
    """Triangular HTK mel filters, float64.   -> [Q, M] (Q = FFT_LENGTH // 2 + 1 = 513)"""
    n_freqs = FFT_LENGTH // 2 + 1
    bin_hz = np.arange(n_freqs, dtype=np.float32) * np.float32(SAMPLING_RATE / FFT_LENGTH)  # [Q] float32
    mel_lo = 2595.0 * math.log10(1.0 + MIN_FREQUENCY / 700.0)
    mel_hi = 2595.0 * math.log10(1.0 + MAX_FREQUENCY / 700.0)
    edges_hz = 700.0 * (10 ** (np.linspace(mel_lo, mel_hi, n_mels + 2) / 2595.0) - 1.0)  # [M+2] float64
    width = edges_hz[1:] - edges_hz[:-1]                                     # [M+1]
    dist = edges_hz[None, :] - bin_hz[:, None]                               # [Q, M+2] float64
    rising = (-1.0 * dist[:, :-2]) / width[:-1]                              # [Q, M]
    falling = dist[:, 2:] / width[1:]                                        # [Q, M]
    fb = np.maximum(0.0, np.minimum(rising, falling))                        # [Q, M]
    fb.setflags(write=False)
    return fb


@functools.lru_cache(maxsize=1)
def hann_window() -> np.ndarray:
    """Periodic Hann window of FRAME_LENGTH samples, computed in float32 like the reference.   -> [512]"""
    n = np.arange(FRAME_LENGTH, dtype=np.float32)                            # [512]
    w = (np.float32(0.5) * (np.float32(1.0) - np.cos(np.float32(2 * np.pi) * n / np.float32(FRAME_LENGTH))))
    w = w.astype(np.float32)                                                 # [512] (already float32)
    w.setflags(write=False)
    return w


def log_mel(waveform: np.ndarray, n_mels: int = N_MELS) -> np.ndarray:
    """Log-mel spectrogram of padded float32 waveforms, steps 3-8 above.   [B, A] -> [B, F, M] float32"""
    B, A = waveform.shape
    n_frames = (A - FRAME_FOR_UNFOLD) // HOP_LENGTH + 1
    if n_frames <= 0:
        return np.zeros((B, 0, n_mels), dtype=np.float32)
    u = np.lib.stride_tricks.sliding_window_view(waveform, FRAME_FOR_UNFOLD, axis=-1)[:, ::HOP_LENGTH]  # [B, F, 513]
    first = u[..., :1] * np.float32(1.0 - PREEMPHASIS)                       # [B, F, 1]
    rest = u[..., 1:-1] - np.float32(PREEMPHASIS) * u[..., :-2]              # [B, F, 511]
    frames = np.concatenate([first, rest], axis=-1) * hann_window()          # [B, F, 512]
    magnitude = np.abs(np.fft.rfft(frames, n=FFT_LENGTH, axis=-1))           # [B, F, Q] float32
    mel = magnitude @ mel_filterbank(n_mels)                                 # [B, F, M] float64
    return np.log(np.maximum(mel, MEL_FLOOR)).astype(np.float32)             # [B, F, M]


def check_waveform(x: np.ndarray, what: str = "audio") -> np.ndarray:
    """Raise InputError unless ``x`` is a non-empty 1-D array of finite numbers; return it as float32."""
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise InputError(f"{what} must hold numbers, got dtype {x.dtype}")
    if x.ndim != 1:
        raise InputError(f"{what} must be 1-D [samples], got shape {x.shape} (mix stereo down first: "
                         "minig3n.audio_io.to_mono)")
    if x.size == 0:
        raise InputError(f"{what} is empty (0 samples)")
    x = x.astype(np.float32)                                                 # [A]
    if not np.all(np.isfinite(x)):
        raise InputError(f"{what} contains NaN or infinite samples")
    return x


def _as_waveforms(waveforms) -> list[np.ndarray]:
    """Accept one waveform (1-D array or list of floats), a 2-D array (one row each) or a list of 1-D arrays."""
    if isinstance(waveforms, np.ndarray):
        if waveforms.ndim == 1:
            items = [waveforms]
        elif waveforms.ndim == 2:
            items = list(waveforms)
        else:
            raise InputError(f"audio array must be 1-D [samples] or 2-D [batch, samples], got shape "
                             f"{waveforms.shape}")
    elif isinstance(waveforms, (list, tuple)):
        if len(waveforms) == 0:
            raise InputError("no audio given (empty list)")
        batched = isinstance(waveforms[0], (np.ndarray, list, tuple))
        items = list(waveforms) if batched else [waveforms]
    else:
        raise InputError(f"audio must be a NumPy array or a list of arrays, got {type(waveforms).__name__}")
    out = []
    for i, w in enumerate(items):
        try:
            w = np.asarray(w)                                                # [A]
        except ValueError:
            raise InputError(f"audio #{i} is ragged; give one 1-D array per waveform") from None
        out.append(check_waveform(w, f"audio #{i}"))                        # [A] float32
    return out


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple or n % multiple == 0 else (n // multiple + 1) * multiple


def extract_features(waveforms, sampling_rate: int = SAMPLING_RATE, padding="longest",
                     max_length: int | None = MAX_LENGTH, truncation: bool = True,
                     pad_to_multiple_of: int | None = PAD_TO_MULTIPLE_OF, dither: float = 0.0,
                     seed: int | None = None, feature_size: int = N_MELS):
    """Waveforms at 16 kHz -> (input_features [B, F, M] float32, input_features_mask [B, F] bool).

    Mirrors ``Gemma3nAudioFeatureExtractor.__call__`` with its defaults. ``padding``: "longest" (or True),
    "max_length", or "do_not_pad" (or False; then every waveform must have the same length).
    ``input_features_mask`` is True on valid frames (the model inverts it: see ``usm.audio_encoder``).
    A waveform shorter than 513 samples (after padding) gives F = 0 frames, as in the reference.
    """
    if sampling_rate != SAMPLING_RATE:
        raise InputError(f"sampling_rate must be {SAMPLING_RATE} Hz, got {sampling_rate}; resample first "
                         "(minig3n.audio_io.resample)")
    waves = _as_waveforms(waveforms)
    if padding is True:
        padding = "longest"
    if padding is False:
        padding = "do_not_pad"
    if padding not in ("longest", "max_length", "do_not_pad"):
        raise InputError(f"padding must be 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
    if (truncation or padding == "max_length") and max_length is None:
        raise InputError("max_length is required with truncation=True or padding='max_length'")

    if truncation:
        limit = _round_up(max_length, pad_to_multiple_of)
        waves = [w[:limit] for w in waves]
    lengths = [len(w) for w in waves]
    if padding == "do_not_pad":
        target = lengths[0]
        if any(n != target for n in lengths):
            raise InputError(f"padding='do_not_pad' needs waveforms of equal length, got lengths {lengths}")
    else:
        target = _round_up(max(lengths) if padding == "longest" else max_length, pad_to_multiple_of)
        if any(n > target for n in lengths):
            raise InputError(f"a waveform of {max(lengths)} samples is longer than max_length={max_length}; "
                             "use truncation=True or a larger max_length")

    batch = np.zeros((len(waves), target), dtype=np.float32)                 # [B, A]
    sample_mask = np.zeros((len(waves), target), dtype=bool)                 # [B, A]
    for i, w in enumerate(waves):
        batch[i, :len(w)] = w
        sample_mask[i, :len(w)] = True

    if dither > 0.0:
        rng = np.random.RandomState(seed)
        for i in range(len(waves)):  # one draw per waveform, in batch order, as the reference does
            noise = rng.randn(1, target).astype(np.float32)[0]              # [A]
            batch[i] = batch[i] + np.float32(dither) * noise

    features = log_mel(batch, feature_size)                                  # [B, F, M]
    mask = sample_mask[:, ::HOP_LENGTH][:, :features.shape[1]]               # [B, F]
    return features, mask
