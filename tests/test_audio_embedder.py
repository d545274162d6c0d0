"""The multimodal embedder (soft and hard paths) against the reference's goldens (NumPy tier)."""
import numpy as np
import pytest

from minig3n.errors import InputError
from tests.adapters.audio import run_embed_hard, run_embed_soft
from tests.golden_io import load_golden, rel_err

pytestmark = pytest.mark.audio

TOL = {"32": 1e-5, "64": 1e-10}   # tests/README.md


@pytest.fixture(scope="module")
def g():
    return load_golden("audio_embedder")


@pytest.mark.parametrize("tag", ["32", "64"])
def test_soft_path(g, tag):
    dt = np.float32 if tag == "32" else np.float64
    want = (g.out32 if tag == "32" else g.out64)["soft"]
    got = run_embed_soft(g.inputs["soft"].astype(dt), {k: v.astype(dt) for k, v in g.weights.items()},
                         g.meta["eps"])
    assert got.dtype == dt and rel_err(got, want) <= TOL[tag]


@pytest.mark.parametrize("tag", ["32", "64"])
def test_hard_path(g, tag):
    dt = np.float32 if tag == "32" else np.float64
    want = (g.out32 if tag == "32" else g.out64)["hard"]
    ids = g.inputs["ids"].astype(np.int64) - g.meta["vocab_offset"]
    got = run_embed_hard(ids, {k: v.astype(dt) for k, v in g.weights.items()}, g.meta["eps"])
    assert got.dtype == dt and rel_err(got, want) <= TOL[tag]


def test_output_has_unit_rms_by_hand(g):
    """Derived by hand: the last step is a weightless RMSNorm, so every output vector y has
    mean(y^2) = ms / (ms + eps) with ms the projection's mean square: 1 up to eps / ms (< 1e-6 here)."""
    y = run_embed_soft(g.inputs["soft"].astype(np.float64), g.weights, 1e-6)
    np.testing.assert_allclose(np.mean(y * y, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("ids", [np.array([128]), np.array([-1]), np.array([0.5])])
def test_bad_ids(g, ids):
    with pytest.raises(InputError, match="ids"):
        run_embed_hard(ids, g.weights, 1e-6)


def test_weight_shapes(g):
    from minig3n.config import e2b_config
    from minig3n.embedder import embedder_weight_shapes
    assert embedder_weight_shapes(32, 24, prefix="") == {k: tuple(v.shape) for k, v in g.weights.items()}
    cfg = e2b_config()
    audio = embedder_weight_shapes(cfg.audio, cfg.text, "model.embed_audio.")
    vision = embedder_weight_shapes(cfg.vision, cfg.text, "model.embed_vision.")
    assert audio["model.embed_audio.embedding_projection.weight"] == (2048, 1536)   # numerics doc section 5
    assert audio["model.embed_audio.embedding.weight"] == (128, 1536)
    assert vision["model.embed_vision.embedding_projection.weight"] == (2048, 2048)
