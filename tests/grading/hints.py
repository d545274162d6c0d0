"""Known mistakes: an error signature -> a hint in the feedback.

A hint's signature is the relative error each golden case of a graded function shows when the mistake is
made (golden inputs are fixed, so the error is a fingerprint). The numbers are not guesses: each mistake
is implemented as a patch of the correct fixture (``tests/grading/fixtures/mistakes.py``), and
``tests/test_grader.py`` grades it, re-measures every signature (it must agree within ``FACTOR``) and checks
that the feedback shows the hint. A failing golden case matches a hint when its function, case, output
and dtype are in the signature and its error is within a factor ``FACTOR`` of the recorded one. Random
cases are never matched (their inputs change per run); the golden case of the same check carries the hint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

FACTOR = 1.1
ANY = None    # dtype: either


@dataclass(frozen=True)
class Hint:
    key: str                 # fixtures/mistakes.py: the patch making this mistake
    text: str
    signature: tuple         # ((function, case label, output, dtype or ANY, relative error), ...)


HINTS = [
    Hint("laurel_one_plus_w",
         "LAuReL's post_laurel_norm multiplies by w, not 1 + w (Gemma3nRMSNorm with_scale: x * w; chapter 04).",
         (("laurel", "golden:text_laurel", "out", ANY, 0.5289),)),
    Hint("laurel_eps_outside_sqrt",
         "The eps belongs inside the square root: x / sqrt(mean(x^2) + eps), not x / (sqrt(mean(x^2)) + eps) "
         "(float32 hides it, float64 shows 1.6e-6; chapter 04).",
         (("laurel", "golden:text_laurel", "out", "float64", 1.616e-6),)),
    Hint("topk_std_ddof1",
         "gaussian_topk uses the population std (divide by n, as torch.std(unbiased=False)), not n - 1 "
         "(chapter 06).",
         (("gaussian_topk", "golden:grade_mlp", "out", ANY, 0.011894),
          ("mlp", "golden:text_mlp_sparse", "out", ANY, 0.030495))),
    Hint("rotate_half_interleaved",
         "rotate_half splits the last axis into two contiguous halves, [x1, x2] -> [-x2, x1], not "
         "interleaved (even, odd) pairs (chapter 05).",
         (("rotate_half", "golden:grade_attention", "out", ANY, 1.32476),
          ("apply_rope", "golden:grade_attention full", "out", ANY, 1.00505),
          ("apply_rope", "golden:grade_attention sliding", "out", ANY, 1.21444),
          ("self_attention", "golden:text_attention_sliding", "out", ANY, 1.26770),
          ("self_attention", "golden:text_attention_full", "out", ANY, 0.70676))),
    Hint("hann_symmetric",
         "The window is the periodic Hann 0.5 (1 - cos(2 pi n / 512)), not the symmetric one "
         "(np.hanning(512) divides by 511; chapter 09).",
         (("hann_window", "golden:grade_features", "out", ANY, 0.0047063),
          ("log_mel", "golden:grade_features wave1000", "out", ANY, 0.0032300),
          ("log_mel", "golden:grade_features wave2345", "out", ANY, 0.0018648),
          ("extract_features", "golden:audio_features batch", "features", ANY, 0.025618))),
    Hint("ple_no_rsqrt2",
         "The per-layer input is (projection + token part) / sqrt(2) (times the float32 0.70710677), not the "
         "plain sum (chapter 02).",
         (("project_per_layer_inputs", "golden:text_ple (token part -> per_layer_inputs)", "out", ANY, 0.41421),
          ("per_layer_inputs", "golden:text_ple", "out", ANY, 0.41421))),
    Hint("mlp_exact_gelu",
         "Gemma 3n's MLP uses the tanh approximation of GELU (gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) "
         "(x + 0.044715 x^3)))), not the exact erf GELU (chapter 06).",
         (("mlp", "golden:text_mlp_sparse", "out", ANY, 1.4823e-4),
          ("mlp", "golden:text_mlp_dense", "out", ANY, 2.1258e-4))),
    Hint("decoder_no_sqrt2",
         "The attention and LAuReL branches are averaged: (a + attn + laurel) / sqrt(2), not summed "
         "(chapter 07).",
         (("decoder_layer", "golden:text_decoder_layer", "out", ANY, 0.36236),)),
    Hint("attention_scaled",
         "Gemma 3n attention uses scaling 1.0 (q and k are RMS-normed): do not divide the scores by "
         "sqrt(head_dim) (chapter 05).",
         (("self_attention", "golden:text_attention_sliding", "out", ANY, 0.64038),
          ("self_attention", "golden:text_attention_full", "out", ANY, 0.61411))),
]


def match(function: str, output: str, dtype: str | None, case_label: str, err) -> str | None:
    """The hint whose signature a failing golden case matches, or None."""
    if err is None or not err > 0 or not math.isfinite(err) or not case_label.startswith("golden"):
        return None
    for h in HINTS:
        for fn, case, out, dt, want in h.signature:
            if fn == function and case == case_label and out == output and (dt is ANY or dt == dtype) \
                    and abs(math.log(err / want)) <= math.log(FACTOR):
                return h.text
    return None
