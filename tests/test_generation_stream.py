"""Streaming: the printed pieces concatenate to the final decode, multi-byte characters are printed whole."""
import pytest

from tests.adapters import generation as A
from tests.golden_io import load_golden

pytestmark = pytest.mark.generation


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return A.load_tokenizer(tiny_dir)


def test_stream_equals_decode_for_every_golden_string(tok):
    gold = load_golden("generation_tokenizer").meta
    for ids in gold["ids"] + [c["ids"] for c in gold["byte_runs"]]:
        pieces = A.run_stream(tok, ids)
        assert "".join(pieces) == A.run_decode(tok, ids)
        # a piece never ends inside a character: no replacement char where the final text has none
        assert all("\ufffd" not in p for p in pieces) or "\ufffd" in A.run_decode(tok, ids)


def test_multibyte_character_printed_once_whole(tok):
    """"日" is three byte pieces <0xE6><0x97><0xA5> in the tiny vocabulary (no piece for it): nothing is printed
    until the run ends, then the whole character at once."""
    ids = tok.encode("a日b", add_bos=False)
    byte = [tok.piece_to_id["<0x%02X>" % b] for b in (0xE6, 0x97, 0xA5)]
    assert ids == [ids[0]] + byte + [ids[-1]]
    pieces = A.run_stream(tok, ids)
    assert pieces == ["a", "", "", "", "日b", ""]


def test_leading_space_marker_kept(tok):
    """Gemma has no dummy prefix: a first piece '▁the' streams as ' the' (the space is real text)."""
    ids = tok.encode(" the end", add_bos=False)
    assert "".join(A.run_stream(tok, ids)) == " the end"
    assert A.run_stream(tok, ids)[0].startswith(" ")
