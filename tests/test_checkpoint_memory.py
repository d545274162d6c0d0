"""The per-layer-embedding table is gathered row by row, never made resident (issue: E2B's is 3.75 GiB).

Uses a sparse sharded BF16 checkpoint with the full E2B text shapes (holes on disk, so it costs no disk
and no time to write). Figures for the full picture: ``python -m tests.bench.bench_loader_memory``.
"""
import numpy as np
import pytest

from tests.bench.bench_loader_memory import measure, write_sparse_checkpoint

pytestmark = pytest.mark.foundation


def test_e2b_shapes_load_with_small_resident_memory(tmp_path):
    shapes = write_sparse_checkpoint(tmp_path / "e2b", "E2B")
    r = measure(tmp_path / "e2b")
    ple_bytes = int(np.prod(shapes["model.language_model.embed_tokens_per_layer.weight"])) * 2
    assert r["ple_rows"] == [64, 30 * 256]
    # Peak = interpreter + numpy + layer 0 in float32 (~240 MiB) + the mapped pages it read. Loading the
    # PLE table would add 3,840 MiB (BF16) or 7,680 MiB (float32); 0.25 x the table leaves a wide margin
    # for the interpreter while still failing loudly if the table is ever read whole.
    assert r["peak"] < 0.25 * ple_bytes, (r, ple_bytes)
