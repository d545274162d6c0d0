"""The seam between the MatFormer tests and minig3n.matformer (swap these bodies to grade another
implementation). Counts come back as plain dicts {"total", "text", "effective"} plus the parts "audio", "vision",
"embedders", "lm_head" (the tied head counted separately)."""
from __future__ import annotations

from tests.adapters._impl import impl

matformer = impl("matformer")   # minig3n.matformer, or a student's matformer.py (tests/adapters/_impl.py)


def _counts(c) -> dict:
    return {"total": c.total, "text": c.text, "effective": c.effective, "audio": c.audio, "vision": c.vision,
            "embedders": c.embedders, "lm_head": c.lm_head}


def run_published_spec(name: str) -> tuple[list, list]:
    """(ffn_dims of the kept layers, skipped layers) of the published configuration ``name``."""
    row = matformer.find_published(name)
    return list(row.ffn_dims), list(row.skip_layers)


def run_published_table() -> list[dict]:
    """Every row of the published table: name, effective_params_b, mmlu, ffn_dims, skip_layers."""
    return [dict(name=r.name, effective_params_b=r.effective_params_b, mmlu=r.mmlu, ffn_dims=list(r.ffn_dims),
                 skip_layers=list(r.skip_layers)) for r in matformer.read_published()]


def run_slice_config(cfg, ffn_dims=None, skip_layers=()):
    """The Gemma3nConfig of ``cfg`` sliced by the spec."""
    return matformer.slice_config(cfg, matformer.SliceSpec(ffn_dims, list(skip_layers)))


def run_count_config(cfg) -> dict:
    return _counts(matformer.count_config(cfg))


def run_count_checkpoint(model_dir) -> dict:
    return _counts(matformer.count_checkpoint(model_dir))


def run_slice(model_dir, out_dir, ffn_dims=None, skip_layers=(), max_shard_bytes=2 << 30):
    """Write the sliced checkpoint; returns its directory."""
    return matformer.slice_checkpoint(model_dir, out_dir, matformer.SliceSpec(ffn_dims, list(skip_layers)),
                                      max_shard_bytes)
