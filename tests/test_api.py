"""The public API of ``minig3n/__init__.py``: every listed name resolves, and the ``from_pretrained`` loaders
agree with the older names they stand for (which keep working)."""
import numpy as np
import pytest

import minig3n
from minig3n.errors import InputError
from tests.conftest import TINY

pytestmark = pytest.mark.foundation


def test_every_public_name_resolves():
    for name in minig3n.__all__:
        assert getattr(minig3n, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        minig3n.nope


def test_from_pretrained_equals_the_older_loaders():
    assert minig3n.Gemma3nConfig.from_pretrained(TINY) == minig3n.Gemma3nConfig.from_file(TINY / "config.json")
    ck = minig3n.Checkpoint.from_pretrained(TINY, dtype=np.float64)
    assert ck.dtype == np.float64 and ck.names == minig3n.Checkpoint(TINY, np.float64).names
    tok = minig3n.Tokenizer.from_pretrained(TINY)
    assert tok.encode("To be") == minig3n.Tokenizer.from_dir(TINY).encode("To be")
    gen = minig3n.Generator.from_pretrained(TINY, dtype=np.float64)
    assert gen.model.dtype == np.float64 and gen.stop_ids == minig3n.Generator.load(TINY, "float64").stop_ids


def test_generator_from_pretrained_rejects_a_bad_dtype():
    with pytest.raises(InputError, match="dtype"):
        minig3n.Generator.from_pretrained(TINY, dtype="float16")
