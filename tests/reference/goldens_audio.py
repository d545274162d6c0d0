"""Audio goldens: log-mel features, the USM encoder (per module, per block, end to end), the embedder.

``make()`` writes:

* ``tests/goldens/audio_features.safetensors``: ``Gemma3nAudioFeatureExtractor()`` (default 128 bins) on
  seeded waveforms: shorter than one frame, a length that is not a multiple of the hop, a padded batch,
  ``padding="max_length"``, dither with a seed, and 31 s of noise (truncated to 30 s; only every 37th frame
  and per-frame sums are stored, the input is regenerated from its seed by the test).
* ``tests/goldens/audio_encoder_tiny.safetensors``: a tiny ``Gemma3nAudioEncoder`` (2 blocks, D = 32,
  4 heads, chunk 4, left context 5) on a padded batch of two clips, with every module's input and output
  (``<module>:in`` / ``<module>``) in float32 and lifted float64.
* ``tests/goldens/audio_encoder_tiny_ctx.safetensors``: another tiny encoder with right context 2,
  chunk 3, reduction 2, conv kernel 5, D = 48, 2 heads.
* ``tests/goldens/audio_embedder.safetensors``: ``Gemma3nMultimodalEmbedder`` (audio width 32, text width
  24), soft and hard paths.

Random weights: every vector (norm scales) uniform in [0.5, 1.5) so that no norm weight is 1, the
``per_dim_scale`` N(0, 0.25), matrices N(0, 1 / fan_in).
"""
from __future__ import annotations

import types

import numpy as np
import torch
from transformers import Gemma3nAudioConfig, Gemma3nAudioFeatureExtractor
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder

from tests.golden_io import save_golden
from tests.reference.lift_audio import lift_audio
from tests.reference.versions import stamp

VERSIONS = dict(stamp("transformers", "torch", local=False), numpy=np.__version__)

TINY = dict(input_feat_size=32, hidden_size=32, conf_num_attention_heads=4, conf_num_hidden_layers=2,
            sscp_conv_channel_size=[16, 8], conf_conv_kernel_size=3, conf_attention_chunk_size=4,
            conf_attention_context_left=5)
TINY_CTX = dict(TINY, hidden_size=48, conf_num_attention_heads=2, conf_attention_chunk_size=3,
                conf_attention_context_left=4, conf_attention_context_right=2, conf_reduction_factor=2,
                conf_conv_kernel_size=5)
LONG_SEED, LONG_SAMPLES, LONG_STRIDE = 7, 496_000, 37


def wave(seed: int, n: int) -> np.ndarray:
    """A seeded test waveform: a 440 Hz tone plus noise, float32."""
    rng = np.random.RandomState(seed)
    t = np.arange(n) / 16000.0
    return (0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.1 * rng.randn(n)).astype(np.float32)


def long_wave() -> np.ndarray:
    """31 s of seeded noise (RandomState.randn is stable across NumPy versions)."""
    return np.random.RandomState(LONG_SEED).randn(LONG_SAMPLES).astype(np.float32) * np.float32(0.1)


def randomize(module: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, prm in module.named_parameters():
            if name.endswith("per_dim_scale"):
                prm.copy_(torch.randn_like(prm) * 0.5)
            elif prm.ndim == 1:
                prm.copy_(torch.rand_like(prm) + 0.5)
            else:
                prm.copy_(torch.randn_like(prm) / np.sqrt(prm[0].numel()))


def make_features() -> None:
    fe = Gemma3nAudioFeatureExtractor()
    inputs, out = {}, {}
    cases = {
        "short": ([wave(1, 300)], {}),
        "hop": ([wave(2, 1000)], {}),
        "batch": ([wave(3, 1000), wave(4, 2345), wave(5, 16037)], {}),
        "maxlen": ([wave(6, 1000), wave(7, 2345)], {"padding": "max_length", "max_length": 4000}),
        "dither": ([wave(8, 1000), wave(9, 2345)], {"dither": 0.01, "seed": 3}),
    }
    for case, (waves, kw) in cases.items():
        for i, w in enumerate(waves):
            inputs[f"{case}.wave{i}"] = w
        kw = dict(kw)
        seed = kw.pop("seed", None)
        dither = kw.pop("dither", 0.0)
        extractor = Gemma3nAudioFeatureExtractor(dither=dither) if dither else fe
        if seed is not None:
            np.random.seed(seed)  # the reference draws its dither from NumPy's global generator
        r = extractor(waves, return_tensors="np", **kw)
        out[f"{case}.features"] = r["input_features"]
        out[f"{case}.mask"] = r["input_features_mask"]
    r = fe([long_wave()], return_tensors="np")
    feats = r["input_features"].astype(np.float64)
    out["long.rows"] = r["input_features"][:, ::LONG_STRIDE]
    out["long.frame_sums"] = feats.sum(axis=-1)
    out["long.mask"] = r["input_features_mask"]
    meta = {"cases": {"short": {}, "hop": {}, "batch": {}, "maxlen": {"padding": "max_length", "max_length": 4000},
                      "dither": {"dither": 0.01, "seed": 3}},
            "long": {"seed": LONG_SEED, "samples": LONG_SAMPLES, "scale": 0.1, "row_stride": LONG_STRIDE,
                     "shape": list(r["input_features"].shape)},
            "versions": VERSIONS}
    save_golden("audio_features", inputs, {}, out, {}, meta)


def _capture(model, names):
    """Forward hooks recording each named module's first input and its output into a dict."""
    got, handles = {}, []
    mods = dict(model.named_modules())
    for name in names:
        def hook(mod, args, output, name=name):
            got[name + ":in"] = args[0].detach().numpy().copy()
            if len(args) > 1:
                got[name + ":mask"] = args[1].detach().numpy().copy()
            out = output.last_hidden_state if hasattr(output, "last_hidden_state") else output
            got[name] = out.detach().numpy().copy()
        handles.append(mods[name].register_forward_hook(hook))
    return got, handles


def make_encoder(golden: str, kw: dict, seed: int, lengths: list[int], detail: bool) -> None:
    torch.manual_seed(seed)
    model = Gemma3nAudioEncoder(Gemma3nAudioConfig(**kw)).eval()
    randomize(model, seed)
    fe = Gemma3nAudioFeatureExtractor(feature_size=kw["input_feat_size"])
    feats = fe([wave(100 + seed + i, n) for i, n in enumerate(lengths)], return_tensors="np")
    features = feats["input_features"]
    mask_invalid = ~feats["input_features_mask"]

    names = ["subsample_conv_projection", "conformer.0.ffw_layer_start", "conformer.0.attention",
             "conformer.0.attention.attn", "conformer.0.lconv1d", "conformer.0.ffw_layer_end"]
    names += [f"conformer.{i}" for i in range(kw["conf_num_hidden_layers"])]
    if detail:  # the SSCP's inner steps (the largest tensors: kept for one golden only)
        names += ["subsample_conv_projection.conv_0.norm", "subsample_conv_projection.conv_1"]

    results = {}
    for tag, dtype in (("32", torch.float32), ("64", torch.float64)):
        m = model.to(dtype)
        got, handles = _capture(m, names)
        ctx = lift_audio() if dtype == torch.float64 else _nullcontext()
        with ctx, torch.no_grad():
            o = m(torch.from_numpy(features).to(dtype), torch.from_numpy(mask_invalid))
        for h in handles:
            h.remove()
        got["out"] = o.last_hidden_state.numpy().copy()
        got["out_mask"] = o.audio_mel_mask.numpy().copy()
        # keep only what the tests use: masks are the same in both precisions; the SSCP's input is
        # in.features and conv_1's input is conv_0's output
        drop = {"subsample_conv_projection:in", "subsample_conv_projection.conv_1:in"}
        results[tag] = {k: v for k, v in got.items() if k not in drop
                        and (not k.endswith(":mask") or k == "conformer.0:mask")}
    model.float()
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
               if k in dict(model.named_parameters())}
    meta = {"config": kw, "seed": seed, "lengths": lengths, "versions": VERSIONS,
            "note": "'<module>:in' is the module's input, '<module>' its output; conformer.0:mask the "
                    "subsampled padding mask (True = padded)"}
    save_golden(golden, {"features": features, "mask_invalid": mask_invalid}, weights,
                results["32"], results["64"], meta)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def make_embedder() -> None:
    seed = 11
    audio_cfg = Gemma3nAudioConfig(hidden_size=32)
    emb = Gemma3nMultimodalEmbedder(audio_cfg, types.SimpleNamespace(hidden_size=24)).eval()
    randomize(emb, seed)
    torch.manual_seed(seed + 1)
    soft = torch.randn(2, 5, 32) * 3.0
    ids = torch.tensor([[0, 1, 127], [5, 64, 2]]) + audio_cfg.vocab_offset
    out = {}
    for tag, dtype in (("32", torch.float32), ("64", torch.float64)):
        e = emb.to(dtype)
        ctx = lift_audio() if dtype == torch.float64 else _nullcontext()
        with ctx, torch.no_grad():
            out[tag] = {"soft": e(inputs_embeds=soft.to(dtype)).numpy().copy(),
                        "hard": e(input_ids=ids).numpy().copy()}
    emb.float()
    weights = {k: v.detach().numpy().copy() for k, v in emb.state_dict().items()}
    meta = {"audio_hidden": 32, "text_hidden": 24, "vocab_offset": audio_cfg.vocab_offset,
            "eps": audio_cfg.rms_norm_eps, "seed": seed, "versions": VERSIONS}
    save_golden("audio_embedder", {"soft": soft.numpy(), "ids": ids.numpy()}, weights, out["32"], out["64"], meta)


def make() -> None:
    torch.set_num_threads(1)
    make_features()
    make_encoder("audio_encoder_tiny", TINY, seed=0, lengths=[9000, 4000], detail=True)
    make_encoder("audio_encoder_tiny_ctx", TINY_CTX, seed=1, lengths=[7000, 2500], detail=False)
    make_embedder()
