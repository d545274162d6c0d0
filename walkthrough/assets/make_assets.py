"""Writes the walkthrough's small media assets (run from anywhere; committed outputs, so rarely needed).

    python walkthrough/assets/make_assets.py

* ``spoken_digits.wav``: "three, one, four, one, five" spoken by espeak-ng (voice en-us, 150 words/min),
  resampled from espeak-ng's 22.05 kHz to 16 kHz (scipy's polyphase filter, 320/441), 16-bit mono PCM.
  espeak-ng is a Debian package; this script installs it with apt-get when it is missing (root only).
  Synthesised speech, so no licence question; espeak-ng's output is deterministic for a given version.

The photo chapter 11 uses is not stored here: it is matplotlib's bundled sample ``grace_hopper.jpg``
(``matplotlib.cbook.get_sample_data``), a US Navy photograph in the public domain.
"""
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

HERE = Path(__file__).resolve().parent
TEXT = "three, one, four, one, five"


def ensure_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe:
        return exe
    print("espeak-ng not found: installing the Debian package (apt-get update && apt-get install -y espeak-ng)")
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "espeak-ng"], check=True)
    return shutil.which("espeak-ng") or sys.exit("espeak-ng still not on PATH after apt-get install")


def main() -> int:
    exe = ensure_espeak()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(raw), TEXT], check=True)
        with wave.open(str(raw)) as w:
            rate, data = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(data, np.int16).astype(np.float64) / 32768.0
    assert rate == 22050, f"espeak-ng wrote {rate} Hz, expected 22050"
    y = resample_poly(x, 320, 441)
    y = np.clip(np.round(y * 32767), -32768, 32767).astype(np.int16)
    out = HERE / "spoken_digits.wav"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(y.tobytes())
    print(f"wrote {out.name}: {len(y) / 16000:.2f} s at 16 kHz, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
