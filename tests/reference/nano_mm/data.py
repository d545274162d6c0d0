"""The nano-gemma3n-mm training data, drawn at training time: digit images and spoken digit words.

Images (``draw_digit``): one decimal digit in Pillow's built-in scalable font (``ImageFont.load_default(size)``,
Aileron Regular, CC0), ink height 45-70 % of the image height, rotated within +-15 degrees, at a random
position (fully inside), random foreground / background colours with a luminance difference of at least 0.4
(either way round), Gaussian pixel noise sigma 8/255, on a canvas of random size (height 40-112 px, width
0.8-1.25 x the height; the processor resizes it).

Speech (``speak_digit``): the word ("zero" ... "nine") synthesised by espeak-ng (Debian package; ``ensure_espeak``
installs it with apt-get, at training time only) with one of its English voices (``VOICES``) and an optional
voice variant, speed 130-200 words/min, pitch 30-70; resampled from 22050 Hz to 16 kHz (polyphase,
``scipy.signal.resample_poly``), leading and trailing silence trimmed, then a random leading silence of
0-0.3 s and white noise at 20 +- 2 dB SNR (relative to the speech's mean power).

Every draw takes a ``numpy.random.Generator``, so a seed fixes a sample. Training, the committed held-out
files and the model card's fresh held-out sets use disjoint seeds (``SEEDS``).
"""
from __future__ import annotations

import functools
import io
import shutil
import subprocess
import wave

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
          "en-us-nyc")
VARIANTS = ("", "", "+m3", "+f2", "+f4", "+klatt")     # "" twice: half of the clips use the plain voice
RATE = 16000
ESPEAK_RATE = 22050
SEEDS = dict(train=1, committed_heldout=1000, card_heldout=2000, test_fresh=3000)


# --- images ---------------------------------------------------------------------------------------------
def _luminance(rgb) -> float:
    r, g, b = (c / 255.0 for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _colours(rng) -> tuple[tuple, tuple]:
    while True:
        fg, bg = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
        if abs(_luminance(fg) - _luminance(bg)) >= 0.4:
            return fg, bg


def draw_digit(rng, digit: int | None = None):
    """-> (PIL RGB image, digit)."""
    image, digit, _ = draw_digit_with_mask(rng, digit)
    return image, digit


def draw_digit_with_mask(rng, digit: int | None = None):
    """-> (PIL RGB image, digit, PIL "L" ink mask of the same size: 255 where the glyph is). The same draws from
    ``rng`` as ``draw_digit`` (same image); the mask is for training-only auxiliary targets."""
    from PIL import Image, ImageDraw, ImageFont

    digit = int(rng.integers(0, 10)) if digit is None else int(digit)
    H = int(rng.integers(40, 113))
    W = int(round(H * rng.uniform(0.8, 1.25)))
    frac = rng.uniform(0.45, 0.70)
    angle = rng.uniform(-15.0, 15.0)
    fg, bg = _colours(rng)
    # draw large, rotate, crop to the ink, then fix the font size so the rotated ink is frac * H tall
    probe = 100
    mask = _ink(str(digit), probe, angle, ImageFont, Image, ImageDraw)
    size = max(6, int(round(probe * frac * H / mask.size[1])))
    mask = _ink(str(digit), size, angle, ImageFont, Image, ImageDraw)
    mw, mh = mask.size
    mw, mh = min(mw, W), min(mh, H)
    mask = mask.crop((0, 0, mw, mh))
    x, y = int(rng.integers(0, W - mw + 1)), int(rng.integers(0, H - mh + 1))
    img = Image.new("RGB", (W, H), bg)
    img.paste(Image.new("RGB", (mw, mh), fg), (x, y), mask)
    ink = Image.new("L", (W, H), 0)
    ink.paste(mask, (x, y))
    a = np.asarray(img, dtype=np.float64) + rng.normal(0.0, 8.0, (H, W, 3))  # sigma 8/255 of full scale
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)), digit, ink


def _ink(text: str, size: int, angle: float, ImageFont, Image, ImageDraw):
    """Grey mask of ``text`` at font size ``size`` rotated by ``angle``, cropped to its ink."""
    font = ImageFont.load_default(size=size)
    canvas = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(canvas).text((size // 2, size // 4), text, fill=255, font=font)
    canvas = canvas.rotate(angle, resample=Image.BICUBIC, expand=True)
    return canvas.crop(canvas.getbbox())


# --- speech ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def ensure_espeak() -> str:
    """The espeak-ng binary; installed with apt-get (after apt-get update) if missing. Every synthesis goes
    through it, so a test or script that builds clips on a fresh machine needs no set-up step of its own."""
    path = shutil.which("espeak-ng")
    if path is None:
        subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "espeak-ng"], check=True, stdout=subprocess.DEVNULL)
        path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("espeak-ng is not installed and apt-get could not install it")
    return path


def synthesize(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's 22050 Hz 16-bit mono WAV of ``word`` -> float64 samples in [-1, 1]."""
    wav = subprocess.run([ensure_espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getframerate() == ESPEAK_RATE and w.getsampwidth() == 2 and w.getnchannels() == 1
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return x.astype(np.float64) / 32768.0


def _trim(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(x) > threshold)
    return x[loud[0]:loud[-1] + 1] if len(loud) else x


def draw_voice(rng) -> tuple[str, int, int]:
    voice = VOICES[int(rng.integers(0, len(VOICES)))] + VARIANTS[int(rng.integers(0, len(VARIANTS)))]
    return voice, int(rng.integers(130, 201)), int(rng.integers(30, 71))


def clean_clip(digit: int, voice: str, speed: int, pitch: int) -> np.ndarray:
    """The synthesised word at 16 kHz, silence trimmed (no noise yet). float64 [A]."""
    from scipy.signal import resample_poly

    x = synthesize(WORDS[digit], voice, speed, pitch)
    return _trim(resample_poly(x, 320, 441))        # 22050 * 320 / 441 = 16000


def augment(clean: np.ndarray, rng) -> np.ndarray:
    """Random leading silence 0-0.3 s + white noise at 20 +- 2 dB SNR -> float32 [A'] in [-1, 1]."""
    lead = int(rng.integers(0, int(0.3 * RATE) + 1))
    x = np.concatenate([np.zeros(lead), clean])
    snr_db = rng.uniform(18.0, 22.0)
    noise_power = np.mean(clean ** 2) / 10 ** (snr_db / 10)
    x = x + rng.normal(0.0, np.sqrt(noise_power), len(x))
    peak = np.abs(x).max()
    if peak > 0.99:
        x = x * (0.99 / peak)
    return x.astype(np.float32)


def speak_digit(rng, digit: int | None = None) -> tuple[np.ndarray, int, str]:
    """-> (16 kHz float32 samples, digit, 'voice speed pitch')."""
    digit = int(rng.integers(0, 10)) if digit is None else int(digit)
    voice, speed, pitch = draw_voice(rng)
    return augment(clean_clip(digit, voice, speed, pitch), rng), digit, f"{voice} {speed} {pitch}"


def clean_pool(n: int, seed: int, progress=None) -> list[tuple[np.ndarray, int]]:
    """``n`` clean clips (digits balanced: i % 10), voices/speeds/pitches drawn from ``seed``. Augmentation
    (leading silence, noise) is drawn afresh every time a clip is used."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        voice, speed, pitch = draw_voice(rng)
        out.append((clean_clip(i % 10, voice, speed, pitch), i % 10))
        if progress is not None:
            progress(i + 1, n)
    return out


def write_wav(path, x: np.ndarray) -> None:
    """16 kHz 16-bit mono PCM."""
    pcm = np.clip(np.rint(np.asarray(x, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
