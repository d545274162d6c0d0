"""Deterministic media and conversations for the multimodal tests (both tiers) and goldens_multimodal.

Images are drawn with PIL (shapes on a coloured background, two sizes and aspect ratios); audio is a sine
chirp made with NumPy; nothing is read from disk, so no media files are committed."""
from __future__ import annotations

import numpy as np

SAMPLING_RATE = 16_000


def make_images() -> list:
    """Two small RGB pictures: 40 x 30 (landscape) and 24 x 36 (portrait)."""
    from PIL import Image, ImageDraw

    a = Image.new("RGB", (40, 30), (250, 245, 230))
    d = ImageDraw.Draw(a)
    d.rectangle([4, 4, 22, 20], fill=(200, 30, 30))
    d.ellipse([18, 8, 38, 28], fill=(30, 90, 200))
    b = Image.new("RGB", (24, 36), (20, 60, 20))
    d = ImageDraw.Draw(b)
    d.polygon([(2, 34), (12, 2), (22, 34)], fill=(240, 220, 40))
    d.line([(0, 18), (23, 18)], fill=(255, 255, 255), width=2)
    return [a, b]


def make_audio(seconds: float = 0.8, rate: int = SAMPLING_RATE, f0: float = 330.0) -> np.ndarray:
    """A float32 chirp (f0 -> 2 f0) with a soft attack, amplitude 0.4.   -> [seconds * rate]"""
    t = np.arange(int(round(seconds * rate))) / rate
    phase = 2 * np.pi * (f0 * t + 0.5 * f0 * t ** 2 / seconds)
    return (0.4 * np.sin(phase) * np.minimum(1.0, t / 0.05)).astype(np.float32)


def conversation(images, audio) -> list[dict]:
    """The issue-7 conversation: a system prompt, one user turn with two images and one audio clip."""
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [
            {"type": "image", "image": images[0]},
            {"type": "text", "text": "Compare these two pictures:"},
            {"type": "image", "image": images[1]},
            {"type": "audio", "audio": audio},
            {"type": "text", "text": "and say what the sound is."},
        ]},
    ]


def id_cases(images, audio, audio2) -> dict:
    """Message lists whose ids must equal the reference processor's (name -> messages)."""
    return {
        "two_images_one_audio": conversation(images, audio),
        "image_only": [{"role": "user", "content": [{"type": "image", "image": images[1]},
                                                     {"type": "text", "text": "What is this?"}]}],
        "audio_only": [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                                     {"type": "text", "text": "Transcribe."}]}],
        "few_shot_audio": [
            {"role": "user", "content": [{"type": "audio", "audio": audio2}, {"type": "text", "text": "Transcribe."}]},
            {"role": "assistant", "content": "a rising tone"},
            {"role": "user", "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": "Transcribe."}]},
        ],
        "text_only": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
    }
