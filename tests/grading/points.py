"""The grading table: which functions are graded, in which order, for how many points.

``points.csv`` (next to this file) is the one table a teacher edits: one row per check,
``concept,step,module,function,check,points``. ``function`` is the name the student's ``<module>.py`` must
define (a function or a class); ``check`` names its case builder in ``cases.py``; ``points`` are awarded
**per dtype**: a check is run in float32 and in float64, each earning ``points x`` the fraction of its outputs
(over every golden and random case) within tolerance. Checks listed in ``DTYPE_FREE`` (ids, masks, shapes,
constants, float32-only audio features) run once and the result counts for both dtypes. A concept's
maximum is ``2 x`` the sum of its points. Delete a row to stop grading that check; change ``points`` to
reweigh; the order of ``step`` is the order of walkthrough/ASSIGNMENTS.md.

``ALLOWED`` says which names of the *replaced* minig3n module a student's code may still call (everything
in minig3n's other modules is allowed: ``minig3n.ops.linear``, ``rms_norm``, ``gelu_tanh``, ``softcap``,
``minig3n.config``, the earlier concepts' modules ...). Any other call into the replaced module during a
graded call is reported as not the student's code.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).with_name("points.csv")

DTYPE_FREE = {"std_multiplier", "ple_ids", "rope_inv_freq", "attention_mask", "layer_sliding_window",
              "kv_sharing_modes", "kv_producer", "warp", "probabilities", "sample_next", "stream_decoder",
              "hann_window", "mel_filterbank", "log_mel", "extract_features", "q_scale", "inv_timescales",
              "same_padding"}

ALLOWED = {
    "decoder": {"TextModel", "_RootParams", "load_text_model", "check_input_ids"},
    "kv_cache": {"ForwardKV"},         # minig3n's forward's own bookkeeping around the cache it is handed
    "sampling": {"SamplingParams"},
    "generate": {"Prompt", "_Notice", "check_max_new_tokens", "default_model_dir", "build_prompt"},
    "features": {"check_waveform", "_as_waveforms", "_round_up"},
    "usm": {"_w", "sigmoid", "audio_weight_shapes", "subsample_mask"},
    "mobilenetv5": {"make_divisible", "BlockSpec", "EncoderSpec", "decode_block", "arch_from_config", "encoder_spec",
                    "_block_spec", "vision_weight_shapes", "_record", "gelu", "image_soft_tokens"},
}


@dataclass(frozen=True)
class Row:
    concept: str
    step: int
    module: str
    function: str
    check: str
    points: float


def load(path: Path = TABLE) -> list[Row]:
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, r in enumerate(csv.DictReader(f), start=2):
            try:
                rows.append(Row(r["concept"].strip(), int(r["step"]), r["module"].strip(), r["function"].strip(),
                                r["check"].strip(), float(r["points"])))
            except (KeyError, ValueError, AttributeError) as e:
                raise SystemExit(f"{path}:{i}: bad row {r} ({e}); expected concept,step,module,function,check,points")
    from tests.grading.cases import BUILDERS
    unknown = sorted({r.check for r in rows} - set(BUILDERS))
    if unknown:
        raise SystemExit(f"{path}: unknown check(s) {unknown}; known: {sorted(BUILDERS)}")
    return sorted(rows, key=lambda r: r.step)


def concepts(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(r.concept for r in rows))
