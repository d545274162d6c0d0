"""The audio chapter's seam: tests call only these functions. To grade another implementation, set
``MINIG3N_STUDENT`` (tests/adapters/_impl.py, walkthrough/ASSIGNMENTS.md) or make each ``run_*`` call it
instead of minig3n (same arguments, same return values).

Conventions: weights ``p`` are mappings under the HF names relative to the module at hand; masks are
bool arrays with True = padded frame inside the encoder (the reference's ``audio_mel_mask``);
``cfg`` is a ``minig3n.config.AudioConfig``.
"""
from tests.adapters._impl import impl

# Every call below goes through impl(<module>): minig3n's function, or a student's re-implementation of it
# when MINIG3N_STUDENT names a directory holding <module>.py (see tests/adapters/_impl.py).
audio_io, embedder, features, usm = (impl(m) for m in ("audio_io", "embedder", "features", "usm"))


# Features and audio input ---------------------------------------------------------------------------------
def run_extract_features(waveforms, **kwargs):
    """-> (input_features [B, F, M] float32, input_features_mask [B, F] bool, True = valid)."""
    return features.extract_features(waveforms, **kwargs)


def run_load_audio(source, sampling_rate=None):
    """WAV path or array -> mono float32 [A] at 16 kHz."""
    return audio_io.load_audio(source, sampling_rate)


def run_resample(x, rate, target=16_000):
    return audio_io.resample(x, rate, target)


# Encoder pieces -------------------------------------------------------------------------------------------
def run_cumulative_group_norm(x, weight, eps):
    """[B, T, F, C] -> [B, T, F, C]"""
    return usm.cumulative_group_norm(x, weight, eps)


def run_subsample_conv_projection(features, p, cfg, trace=None):
    """[B, F, M] -> [B, F', D]; ``trace`` receives '<name>.conv_0' / '.conv_1' in [B, C, T, F] layout."""
    return usm.subsample_conv_projection(features, p, cfg, trace, "subsample_conv_projection")


def run_feed_forward(x, p, cfg):
    return usm.feed_forward(x, p, cfg)


def run_local_attention(x, mask_invalid, p, cfg):
    """Attention context before the output projection, heads concatenated: [B, T, D]."""
    return usm.local_attention(x, mask_invalid, p, cfg)


def run_conformer_attention(x, mask_invalid, p, cfg):
    return usm.conformer_attention(x, mask_invalid, p, cfg)


def run_light_conv1d(x, p, cfg):
    return usm.light_conv1d(x, p, cfg)


def run_conformer_block(x, mask_invalid, p, cfg):
    return usm.conformer_block(x, mask_invalid, p, cfg)


def run_audio_encoder(features, mask_invalid, p, cfg, trace=None):
    """-> (out [B, F', D], mask_invalid [B, F'])"""
    return usm.audio_encoder(features, mask_invalid, p, cfg, trace)


def run_q_scale(head_dim):
    return usm.q_scale(head_dim)


def run_inv_timescales(hidden_size):
    return usm.inv_timescales(hidden_size)


def run_audio_weight_shapes(cfg, prefix="model.audio_tower."):
    return usm.audio_weight_shapes(cfg, prefix)


# Embedder -------------------------------------------------------------------------------------------------
def run_embed_soft(x, p, eps):
    return embedder.embed_soft(x, p, eps)


def run_embed_hard(ids_minus_offset, p, eps):
    return embedder.embed_hard(ids_minus_offset, p, eps)
