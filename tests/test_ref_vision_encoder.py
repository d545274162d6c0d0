"""MobileNetV5 against the live reference (timm 1.0.31, transformers 5.24), fresh seeds.

* the fixture spec and a dilated spec (five strided stages: the fifth stage's stride becomes dilation 2,
  its MSFA inputs share one resolution and are bilinearly *upsampled* 4 -> 6), per module and end to end,
  float64 (<= 1e-10) and float32 (<= 1e-5), plus the soft tokens of ``get_image_features``;
* the full ``mobilenetv5_300m_enc`` with random weights on one 768 x 768 image in float32 (<= 1e-4 end
  to end, the tolerance for a deep stack: 84 blocks of float32 reductions of length up to 3840);
* its weight names and shapes.
"""
import copy
import time

import numpy as np
import pytest
import torch

from minig3n.config import VisionConfig
from tests.adapters import vision as V
from tests.golden_io import rel_err
from tests.reference import goldens_vision as gv

pytestmark = [pytest.mark.reference, pytest.mark.vision]

DILATED = {"stem_size": 8, "msfa_output_resolution": 6, "arch_def": [
    ["er_r1_k3_s2_e2_c8"], ["uir_r1_a3_k3_s2_e2_c16"], ["uir_r1_a0_k3_s2_e2_c16"], ["er_r1_k3_s2_e2_c16"],
    ["uir_r1_a3_k3_s2_e2_c24", "uir_r1_a3_k3_p3_s1_e2_c24", "mqa_r1_k3_h2_v2_s1_d8_c24", "er_r1_k3_s1_e2_c24"]]}
CASES = {
    "fixture_spec": (dict(gv.SPEC, msfa_output_resolution=2), (2, 3, 64, 64)),
    "fixture_spec_odd": (dict(gv.SPEC, msfa_output_resolution=3), (1, 3, 45, 59)),
    "dilated": (DILATED, (1, 3, 128, 128)),
}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_dilated_spec_really_dilates():
    s = V.run_block_summary(VisionConfig.from_dict(gv.vision_config_dict(DILATED)))
    assert [b[3:5] for b in s[4]] == [(1, 1), (1, 2), (1, 2), (1, 2)]    # (stride, dilation)
    assert s[-1][1] == (4, 5)                                           # MSFA: stages 3 and 4


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_custom_encoder_matches_timm(name, dtype):
    args, shape = CASES[name]
    model = gv.build_timm(args, seed=101)
    torch.manual_seed(202)
    px = torch.rand(shape)
    if dtype == np.float64:
        model, px = copy.deepcopy(model).double(), px.double()
    ref = gv.timm_trace(model, px)
    p = {k: v.astype(dtype) for k, v in gv.state_dict_np(model).items()}
    cfg = VisionConfig.from_dict(gv.vision_config_dict(args))
    assert V.run_weight_shapes(cfg, "") == {k: v.shape for k, v in p.items()}
    trace = {}
    out = V.run_vision_encoder(px.numpy(), p, cfg, trace=trace)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    errs = {k: rel_err(trace[k], ref[k]) for k in ref}
    worst = max(errs, key=errs.get)
    print(f"{name} {np.dtype(dtype).name}: worst {worst} {errs[worst]:.2e}")
    assert errs[worst] <= tol, f"{worst}: {errs[worst]:.2e} > {tol}"
    assert out.shape == ref["msfa"].shape

    # per block, each fed the reference's own input
    sub = lambda name_: {k[len(name_) + 1:]: v for k, v in p.items() if k.startswith(name_ + ".")}  # noqa: E731
    prev = "conv_stem"
    for si, stage in enumerate(V.run_block_summary(cfg)[:-1]):
        for bi in range(len(stage)):
            nm = f"blocks.{si}.{bi}"
            got = V.run_block(ref[prev].astype(dtype), sub(nm), cfg, si, bi)
            assert rel_err(got, ref[nm]) <= tol, f"{nm}: {rel_err(got, ref[nm]):.2e}"
            prev = nm

    # and on into the language model's space (get_image_features)
    embed = gv._embed_weights(seed=303)
    if dtype == np.float64:
        with gv._lift_gemma3n_rmsnorm():
            want = gv.reference_image_features(model, embed, px, args["msfa_output_resolution"])
    else:
        want = gv.reference_image_features(model, embed, px, args["msfa_output_resolution"])
    pe = {k: v.astype(dtype) for k, v in embed.items()}
    assert rel_err(V.run_image_soft_tokens(out, pe, cfg), want) <= tol


@pytest.fixture(scope="module")
def timm_300m():
    return gv.build_timm(None, seed=404, architecture="mobilenetv5_300m_enc")


def test_300m_weight_names_and_shapes(timm_300m):
    sd = timm_300m.state_dict()
    want = {f"model.vision_tower.timm_model.{k}": tuple(v.shape) for k, v in sd.items()}
    assert V.run_weight_shapes(VisionConfig(), "model.vision_tower.timm_model.") == want
    assert len(want) == 548


def test_300m_encoder_matches_timm_on_768(timm_300m):
    """One 768 x 768 image, random weights (norm weights and layer scales drawn in [0.5, 1.5)), float32."""
    torch.manual_seed(505)
    px = torch.rand(1, 3, 768, 768)
    t0 = time.time()
    ref = gv.timm_trace(timm_300m, px)
    t_ref = time.time() - t0
    p = gv.state_dict_np(timm_300m)
    trace = {}
    t0 = time.time()
    out = V.run_vision_encoder(px.numpy(), p, VisionConfig(), trace=trace)
    t_np = time.time() - t0
    errs = {k: rel_err(trace[k], ref[k]) for k in ref}
    worst = max(errs, key=errs.get)
    print(f"300m @768 float32: msfa {errs['msfa']:.2e}, worst {worst} {errs[worst]:.2e}; "
          f"timm {t_ref:.1f}s (1 thread), minig3n {t_np:.1f}s")
    assert out.shape == (1, 2048, 16, 16)
    assert errs["msfa"] <= 1e-4
    assert errs[worst] <= 1e-4, f"{worst}: {errs[worst]:.2e}"


def test_tiny_checkpoint_image_features(tiny_dir):
    """The tiny checkpoint through the reference's own loader and processor: minig3n (Checkpoint, Params,
    preprocessor_config.json) equals ``Gemma3nForConditionalGeneration.get_image_features`` in float32."""
    from transformers import AutoProcessor, Gemma3nForConditionalGeneration

    from minig3n.checkpoint import Checkpoint
    from minig3n.mobilenetv5 import PREFIX
    from tests.vision_test_images import make_images

    img = make_images()["rgba_33x47"]
    proc = AutoProcessor.from_pretrained(tiny_dir)
    px_ref = proc.image_processor(img, return_tensors="pt")["pixel_values"]   # default (torchvision) backend
    model = Gemma3nForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        tower = model.model.vision_tower(pixel_values=px_ref, do_pooling=False).last_hidden_state.numpy().copy()
        out = model.get_image_features(px_ref)
    # get_image_features scales last_hidden_state by sqrt(2048) *in place*, so the map it returns is scaled
    np.testing.assert_allclose(out.last_hidden_state.numpy(), tower * np.float32(2048 ** 0.5), rtol=1e-6)
    ck = Checkpoint(tiny_dir)
    px = V.run_preprocess_image(img, tiny_dir)[None]
    assert np.max(np.abs(px - px_ref.numpy())) <= 1 / 255 + 1e-6            # backends differ by <= 1/255
    feats = V.run_vision_encoder(px_ref.numpy(), ck.params(PREFIX), ck.config.vision)   # identical pixels
    assert rel_err(feats, tower) <= 1e-5
    tok = V.run_image_soft_tokens(feats, ck.params("model.embed_vision"), ck.config.vision)
    assert rel_err(tok, out.pooler_output.numpy()) <= 1e-5
