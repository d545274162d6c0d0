"""Vision goldens: a small custom-spec MobileNetV5 (timm) and the image-token path (transformers).

``make()`` writes ``tests/goldens/vision_encoder.safetensors`` with two cases that share one set of weights:

* ``sq``: 2 images of 64 x 64, ``msfa_output_resolution`` 2 (the MSFA average-pools 4x4 -> 2x2);
* ``odd``: 1 image of 34 x 46, ``msfa_output_resolution`` 2 (the MSFA input is 3 x 3, which 2 does not
  divide: bilinear resize).

The spec (``SPEC``) has every block kind, strided and not: ER (stride 2; stride 1 with skip; a 5x5 one with
a 3x3 projection and a channel count that rounds 20 -> 24), UIR with each optional depthwise conv carrying
the stride in turn (mid, start, end), with and without skip, ``noskip``, a repeat (r2), MQA with kv stride
2 and without. The stem size 6 rounds to 8.

Names: ``in.<case>.pixel_values``; ``out32.<case>.<module>`` / ``out64.<case>.<module>`` for module paths
``conv_stem``, ``blocks.<s>.<b>``, ``msfa`` (relative to ``model.vision_tower.timm_model``) and
``soft_tokens`` (``Gemma3nModel.get_image_features(...).pooler_output``); ``w.timm_model.*`` and
``w.embed_vision.*``. timm computes float64 as float64 (no float32 island: RmsNorm2d, GELU, SDPA and
interpolate all follow the input dtype), so ``out64`` comes from ``model.double()`` as is; only the
embedder's ``Gemma3nRMSNorm`` casts to float32, which ``_lift_gemma3n_rmsnorm`` lifts for ``soft_tokens``.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

from tests.golden_io import save_golden
from tests.reference.timm_custom import ARCH_NAME
from tests.reference.versions import stamp

SPEC = {
    "stem_size": 6,
    "arch_def": [
        ["er_r1_k3_s2_e2_c16", "er_r1_k3_s1_e2_c16", "er_r1_k5_s1_e2_p3_c20"],
        ["uir_r1_a3_k5_s2_e4_c24", "uir_r1_a5_k0_s1_e2_c24", "uir_r1_a0_k3_p3_s1_e2_c24",
         "mqa_r1_k3_h2_v2_s1_d8_c24", "uir_r1_a0_k0_s1_e2_noskip_c24"],
        ["uir_r1_a3_k0_s2_e2_c8", "mqa_r1_k3_h4_s1_d8_c8", "uir_r1_a0_k0_s1_e2_c8"],
        ["uir_r1_a0_k0_p3_s2_e2_c8", "uir_r2_a3_k3_s1_e2_c8"],
    ],
}
CASES = {"sq": dict(shape=(2, 3, 64, 64), res=2, seed=11), "odd": dict(shape=(1, 3, 34, 46), res=2, seed=12)}
TEXT_HIDDEN = 8          # width of the embedder's projection (the text hidden size), kept tiny
PREFIX = "model.vision_tower.timm_model"


def vision_config_dict(model_args: dict | None, architecture: str = ARCH_NAME) -> dict:
    """A ``vision_config`` as the checkpoint's config.json would hold it."""
    d = {"architecture": architecture, "hidden_size": 2048, "vocab_size": 128, "vocab_offset": 262144,
         "rms_norm_eps": 1e-6, "do_pooling": False, "model_type": "gemma3n_vision"}
    if model_args:
        d["model_args"] = model_args
    return d


def build_timm(model_args: dict | None, seed: int, architecture: str = ARCH_NAME):
    """The reference encoder (timm) with random weights in float32. timm initialises every norm weight to 1
    and every layer-scale gamma to 1e-5, which would hide mistakes in those paths, so they (and the stem
    bias, zero in the real checkpoints) are re-drawn away from 1 / 0."""
    import timm
    torch.manual_seed(seed)
    model = timm.create_model(architecture, pretrained=False, num_classes=0, **(model_args or {})).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in model.named_parameters():
            if name.endswith("gamma") or (t.ndim == 1 and not name.endswith("bias")):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return model


def timm_trace(model, pixel_values: torch.Tensor) -> dict:
    """Run the reference and record conv_stem, every block and msfa (names relative to timm_model)."""
    out, hooks = {}, []

    def keep(name):
        return lambda _m, _i, o: out.__setitem__(name, o.detach().numpy().copy())

    hooks.append(model.conv_stem.register_forward_hook(keep("conv_stem")))
    for si, stage in enumerate(model.blocks):
        for bi, blk in enumerate(stage):
            hooks.append(blk.register_forward_hook(keep(f"blocks.{si}.{bi}")))
    hooks.append(model.msfa.register_forward_hook(keep("msfa")))
    try:
        with torch.no_grad():
            final = model(pixel_values)
    finally:
        for h in hooks:
            h.remove()
    assert np.array_equal(out["msfa"], final.numpy())
    return out


def state_dict_np(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _lift_gemma3n_rmsnorm():
    """``Gemma3nRMSNorm.forward`` computes in float32 (``hidden_states.float()``) whatever the model dtype.
    Patched to compute in the input's dtype, nothing else changed (pow(-0.5), then ``* weight``)."""
    from transformers.models.gemma3n import modeling_gemma3n as m

    orig = m.Gemma3nRMSNorm.forward

    def forward(self, hidden_states):
        out = self._norm(hidden_states)
        return out * self.weight if self.with_scale else out

    m.Gemma3nRMSNorm.forward = forward
    try:
        yield
    finally:
        m.Gemma3nRMSNorm.forward = orig


def reference_image_features(timm_model, embed_sd: dict, pixel_values: torch.Tensor, res: int) -> np.ndarray:
    """``Gemma3nModel.get_image_features(pixel_values).pooler_output``, run on a stand-in ``self`` that holds
    the real sub-modules (a TimmWrapperModel around ``timm_model`` and a Gemma3nMultimodalEmbedder), so the
    reshape, the sqrt(hidden) scale and the embedder are the reference's own code."""
    from types import SimpleNamespace

    from transformers import Gemma3nTextConfig, Gemma3nVisionConfig, TimmWrapperModel
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nModel, Gemma3nMultimodalEmbedder

    vcfg = Gemma3nVisionConfig(architecture="resnet18")   # a cheap placeholder; the timm model is swapped in
    tower = TimmWrapperModel(vcfg)
    tower.timm_model = timm_model
    tower = tower.to(next(timm_model.parameters()).dtype).eval()
    tcfg = Gemma3nTextConfig(hidden_size=TEXT_HIDDEN, num_hidden_layers=1, intermediate_size=16,
                             num_attention_heads=1, num_key_value_heads=1, head_dim=8, vocab_size=16,
                             vocab_size_per_layer_input=16, hidden_size_per_layer_input=8, laurel_rank=2,
                             num_kv_shared_layers=0, layer_types=["full_attention"])
    embed = Gemma3nMultimodalEmbedder(vcfg, tcfg)
    embed.load_state_dict({k: torch.from_numpy(v) for k, v in embed_sd.items()})
    embed = embed.to(tower.dtype).eval()
    cfg = SimpleNamespace(vision_config=vcfg, vision_soft_tokens_per_image=res * res, return_dict=True,
                          use_return_dict=True)
    fake = SimpleNamespace(vision_tower=tower, embed_vision=embed, config=cfg)
    with torch.no_grad():
        out = Gemma3nModel.get_image_features.__wrapped__(fake, pixel_values=pixel_values)
    return out.pooler_output.numpy().copy()


def _embed_weights(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"embedding.weight": torch.randn(128, 2048, generator=g).numpy(),
            "hard_embedding_norm.weight": (0.5 + torch.rand(2048, generator=g)).numpy(),
            "soft_embedding_norm.weight": (0.5 + torch.rand(2048, generator=g)).numpy(),
            "embedding_projection.weight": (torch.randn(TEXT_HIDDEN, 2048, generator=g) / 45.0).numpy()}


def make():
    torch.set_num_threads(1)
    base = build_timm(dict(SPEC, msfa_output_resolution=CASES["sq"]["res"]), seed=7)
    weights = state_dict_np(base)
    embed_w = _embed_weights(seed=8)
    inputs, out32, out64 = {}, {}, {}
    for case, c in CASES.items():
        model = build_timm(dict(SPEC, msfa_output_resolution=c["res"]), seed=7)
        model.load_state_dict(base.state_dict())
        g = torch.Generator().manual_seed(c["seed"])
        px = torch.rand(c["shape"], generator=g)                         # pixel values in [0, 1), float32
        inputs[f"{case}.pixel_values"] = px.numpy()
        for name, v in timm_trace(model, px).items():
            out32[f"{case}.{name}"] = v
        out32[f"{case}.soft_tokens"] = reference_image_features(model, embed_w, px, c["res"])
        m64 = copy.deepcopy(model).double()
        for name, v in timm_trace(m64, px.double()).items():
            out64[f"{case}.{name}"] = v
        with _lift_gemma3n_rmsnorm():
            out64[f"{case}.soft_tokens"] = reference_image_features(m64, embed_w, px.double(), c["res"])
    w = {f"timm_model.{k}": v for k, v in weights.items()}
    w.update({f"embed_vision.{k}": v for k, v in embed_w.items() if k != "embedding.weight"})
    meta = {"spec": SPEC, "cases": {k: {"shape": list(v["shape"]), "msfa_output_resolution": v["res"]}
                                    for k, v in CASES.items()},
            "vision_config": vision_config_dict(SPEC), "text_hidden_size": TEXT_HIDDEN,
            "reference": stamp("timm", "torch", "transformers")}
    save_golden("vision_encoder", inputs, w, out32, out64, meta)
    make_image_fixture()
    make_image_fixture_torchvision()


def reference_processor(config: dict, backend: str = "pil"):
    """The reference image processor built from a ``preprocessor_config.json`` dict, as
    ``AutoImageProcessor.from_pretrained`` would (``SiglipImageProcessorPil`` or the default torchvision
    ``SiglipImageProcessor``)."""
    from transformers import SiglipImageProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    cls = SiglipImageProcessorPil if backend == "pil" else SiglipImageProcessor
    return cls(**config)


OFFICIAL_PREPROCESSOR = {"size": {"height": 768, "width": 768}, "resample": 2, "do_normalize": False,
                         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "image_seq_length": 256,
                         "rescale_factor": 1 / 255, "do_rescale": True, "do_resize": True,
                         "image_processor_type": "SiglipImageProcessorFast"}


def make_image_fixture():
    """``tests/goldens/vision_image.safetensors``: the reference PIL backend's pixel values for every test
    picture (tests/vision_test_images.py) under the small configs; no weights."""
    import warnings

    from tests.vision_test_images import SMALL_CONFIGS, make_arrays, make_images

    out32 = {}
    for cname, cfg in SMALL_CONFIGS.items():
        proc = reference_processor(cfg, "pil")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, im in list(make_images().items()) + list(make_arrays().items()):
                out32[f"{cname}.{name}"] = proc(im, return_tensors="np")["pixel_values"][0]
    meta = {"configs": SMALL_CONFIGS, "backend": "SiglipImageProcessorPil",
            "reference": stamp("transformers", "pillow")}
    return save_golden("vision_image", {}, {}, out32, {}, meta)


def make_image_fixture_torchvision():
    """``tests/goldens/vision_image_torchvision.safetensors``: the reference's default torchvision backend
    (``SiglipImageProcessor``) on every test picture, array and file (tests/vision_test_images.py), under the
    official settings at a small size (``official_small``: 20 x 24 BILINEAR, rescale only) and the class defaults
    (``siglip_defaults``: BICUBIC, normalised); no weights. Added for issue 16 next to the PIL fixture."""
    import tempfile
    import warnings

    from tests.vision_test_images import TORCHVISION_CONFIGS as configs
    from tests.vision_test_images import make_arrays, make_images, write_image_files

    out32 = {}
    with tempfile.TemporaryDirectory() as tmp:
        items = list(make_images().items()) + list(make_arrays().items()) + list(write_image_files(tmp).items())
        for cname in configs:
            proc = reference_processor(configs[cname], "torchvision")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for name, im in items:
                    out32[f"{cname}.{name}"] = proc(im, return_tensors="np")["pixel_values"][0]
    meta = {"configs": {k: {kk: vv for kk, vv in v.items()} for k, v in configs.items()},
            "backend": "SiglipImageProcessor (torchvision)",
            "reference": {**stamp("transformers", "torch", "pillow"),
                          "torchvision": __import__("torchvision").__version__,
                          "cpu_capability": torch.backends.cpu.get_cpu_capability()}}
    return save_golden("vision_image_torchvision", {}, {}, out32, {}, meta)
