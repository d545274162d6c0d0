"""AltUp (Alternating Updates): a wide residual stream at the cost of a narrow layer.

The idea: the decoder carries K streams of width D (K = altup_num_inputs = 4) but each layer runs on one of
them only (the "active" stream 0). Before the layer, ``predict`` mixes the streams with coefficients a
router computes from the active stream (``P_i = X_i + sum_j C[i, j] X_j``); the layer transforms the active
prediction; after it, ``correct`` spreads the layer's innovation ``o - P_0`` to every stream with per-stream
gains (``Q_i = P_i + (1 + c_i) (o - P_0)``). Streams 1..K-1 are created from the token embedding by K-1
D x D projections rescaled to its RMS (``make_streams``) and folded back the same way before the final norm
(``collapse_streams``).

Source: Baykal et al., "Alternating Updates for Efficient Transformers" (NeurIPS 2023); transformers 5.24
``Gemma3nTextAltUp`` and the stream set-up/collapse in ``Gemma3nTextModel.forward``; docs/NUMERICS.md
§1.4, §1.5 (steps 1, 7) and §1.8.
Left out: training-time clipping of the coefficients (``altup_coef_clip``; the converter clipped
prediction_coefs already, and 5.24 clips only when training).

Constants: router input scale 1/D (float32), the 1e-5 clamp on the mean square (a Python float in the
reference, so float64 in float64 mode).
"""
from __future__ import annotations

import numpy as np

from .ops import constant, linear, rms_norm


def router_modalities(x, p, cfg):
    """``tanh(modality_router(router_norm(x) / D))``.   [..., D] -> [..., K]

    ``p``: ``router_norm.weight`` [D], ``modality_router.weight`` [K, D]."""
    scale = constant(cfg.hidden_size ** -1.0, x.dtype, getattr(cfg, "exact_constants", False))
    r = rms_norm(x, p["router_norm.weight"], cfg.rms_norm_eps) * scale        # [..., D]
    return np.tanh(linear(r, p["modality_router.weight"]))                    # [..., K] (tanh in float32 in fp32 mode)


def predict(streams, p, cfg):
    """``P_i = X_i + sum_j C[i, j] X_j`` with ``C = reshape(prediction_coefs(router(X_active)), [K, K])``.

    [K, B, T, D] -> [K, B, T, D]. ``p``: the router weights and ``prediction_coefs.weight`` [K*K, K]."""
    K = cfg.altup_num_inputs
    modalities = router_modalities(streams[cfg.altup_active_idx], p, cfg)     # [B, T, K]
    coefs = linear(modalities, p["prediction_coefs.weight"])                  # [B, T, K*K]
    coefs = coefs.reshape(*coefs.shape[:-1], K, K)                            # [B, T, K, K] row-major: C[i, j]
    mixed = np.einsum("btij,jbtd->ibtd", coefs, streams)                      # [K, B, T, D]
    return mixed + streams                                                    # [K, B, T, D]


def correct(predictions, activated, p, cfg):
    """``Q_i = P_i + (correction_coefs(router(o)) + 1)_i * (o - P_active)``.   [K, B, T, D], [B, T, D] -> [K, B, T, D]

    The innovation is taken against the *prediction* of the active stream, not the layer input."""
    modalities = router_modalities(activated, p, cfg)                         # [B, T, K]
    innovation = activated - predictions[cfg.altup_active_idx]                # [B, T, D]
    gains = linear(modalities, p["correction_coefs.weight"]) + activated.dtype.type(1.0)  # [B, T, K]
    gains = np.moveaxis(gains, -1, 0)[..., None]                              # [K, B, T, 1]
    return innovation[None] * gains + predictions                             # [K, B, T, D]


def scale_corrected_output(x, p):
    """``x * correct_output_scale`` (a plain multiply, not 1 + s).   [B, T, D] -> [B, T, D]"""
    return x * p["correct_output_scale"].astype(x.dtype, copy=False)          # [B, T, D]


def _match_magnitude(y, target):
    """Rescale ``y`` to RMS ``target``: ``y * target / sqrt(max(mean(y^2), 1e-5))``.   [..., D] -> [..., D]"""
    mean_sq = np.mean(np.square(y), axis=-1, keepdims=True)                   # [..., 1]
    return y * target / np.sqrt(np.maximum(mean_sq, y.dtype.type(1e-5)))      # [..., D]


def make_streams(h0, p, cfg, rec=None):
    """Stream 0 is the embedding; stream i is ``altup_projections.{i-1}(h0)`` rescaled to h0's RMS (no eps).

    [B, T, D] -> [K, B, T, D]. ``p``: ``altup_projections.{i}.weight`` [D, D] (names relative to the text model).
    ``rec(name, array)``, if given, receives each projection (before the rescale) under its module name."""
    target = np.sqrt(np.mean(np.square(h0), axis=-1, keepdims=True))          # [B, T, 1] ** 0.5 in the reference
    streams = [h0]
    for i in range(1, cfg.altup_num_inputs):
        y = linear(h0, p[f"altup_projections.{i - 1}.weight"])                # [B, T, D]
        if rec is not None:
            rec(f"altup_projections.{i - 1}", y)
        streams.append(_match_magnitude(y, target))                           # [B, T, D]
    return np.stack(streams)                                                  # [K, B, T, D]


def collapse_streams(streams, p, cfg, rec=None):
    """Undo ``make_streams``: unembed streams 1..K-1, rescale them to stream 0's RMS, average all K.

    [K, B, T, D] -> [B, T, D]. ``p``: ``altup_unembed_projections.{i}.weight`` [D, D]. ``rec(name, array)``,
    if given, receives each unembedding (before the rescale) under its module name."""
    x0 = streams[0]                                                           # [B, T, D]
    target = np.sqrt(np.mean(np.square(x0), axis=-1, keepdims=True))          # [B, T, 1]
    outs = [x0]
    for i in range(1, cfg.altup_num_inputs):
        y = linear(streams[i], p[f"altup_unembed_projections.{i - 1}.weight"])  # [B, T, D]
        if rec is not None:
            rec(f"altup_unembed_projections.{i - 1}", y)
        outs.append(_match_magnitude(y, target))                              # [B, T, D]
    return np.mean(np.stack(outs), axis=0)                                    # [B, T, D]
