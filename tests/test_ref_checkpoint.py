"""Reference tier: minig3n's safetensors reader against torch's (the published reference for BF16)."""
import numpy as np
import pytest

import torch  # noqa: E402  (the reference extra is installed for this tier)
from safetensors.torch import save_file  # noqa: E402

from minig3n.checkpoint import load_safetensors, SafetensorsFile, to_float  # noqa: E402

pytestmark = [pytest.mark.reference, pytest.mark.foundation]


def test_bf16_bit_identical_to_torch_upcast(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(257, 33, generator=g) * 100).to(torch.bfloat16)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-40, -3.0], dtype=torch.bfloat16)
    save_file({"x": x, "s": special, "h": x.to(torch.float16)}, str(tmp_path / "t.safetensors"))
    f = SafetensorsFile(tmp_path / "t.safetensors")
    for name, t in (("x", x), ("s", special), ("h", x.to(torch.float16))):
        want = t.float().numpy()
        got32 = to_float(f.raw(name), f.info(name)[0], np.float32)
        assert got32.tobytes() == want.tobytes()  # bit-identical, signed zeros and infinities included
        got64 = to_float(f.raw(name), f.info(name)[0], np.float64)
        np.testing.assert_array_equal(got64, t.double().numpy())  # widening to float64 is exact too


def test_float32_and_float64_files_from_torch(tmp_path):
    x = torch.randn(5, 7, dtype=torch.float64)
    save_file({"a": x, "b": x.float()}, str(tmp_path / "t.safetensors"))
    got, _ = load_safetensors(tmp_path / "t.safetensors")
    assert got["a"].tobytes() == x.numpy().tobytes()
    assert got["b"].tobytes() == x.float().numpy().tobytes()
