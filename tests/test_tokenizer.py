"""Tokenizer: minig3n's sentencepiece tokenizer against the reference tokenizer's goldens (tiny checkpoint)."""
import pytest

from minig3n.errors import CheckpointError
from tests.adapters import generation as A
from tests.golden_io import load_golden

pytestmark = pytest.mark.generation


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return A.load_tokenizer(tiny_dir)


@pytest.fixture(scope="module")
def gold():
    return load_golden("generation_tokenizer").meta


def test_encode_matches_reference(tok, gold):
    assert len(gold["strings"]) >= 30
    for text, want in zip(gold["strings"], gold["ids"]):
        assert A.run_encode(tok, text) == want, repr(text)   # exact: token ids are integers


def test_decode_matches_reference(tok, gold):
    for ids, want, want_skip in zip(gold["ids"], gold["decoded"], gold["decoded_skip"]):
        assert A.run_decode(tok, ids) == want
        assert A.run_decode(tok, ids, skip_special_tokens=True) == want_skip


def test_decode_byte_runs_match_reference(tok, gold):
    """Valid, incomplete and invalid UTF-8 byte-fallback runs, alone and between other tokens."""
    for case in gold["byte_runs"]:
        assert A.run_decode(tok, case["ids"]) == case["text"], case["ids"]
        assert A.run_decode(tok, case["ids"], skip_special_tokens=True) == case["text_skip"], case["ids"]


def test_round_trip_without_bos(tok, gold):
    """decode(encode(text)) == text, except for special-token strings (they decode as written only if they are
    whole tokens) and a literal U+2581, which is the space marker and so decodes to a space (as the reference)."""
    for text in gold["strings"]:
        if "<" not in text and "[multimodal]" not in text and "\u2581" not in text:
            assert A.run_decode(tok, A.run_encode(tok, text, add_bos=False)) == text


def test_special_ids(tok):
    assert A.special_ids(tok) == {
        "pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3, "start_of_turn_id": 6, "end_of_turn_id": 7,
        "boi_id": 1022, "eoi_id": 1024, "image_token_id": 1025, "boa_id": 1023, "eoa_id": 1152,
        "audio_token_id": 1153}


def test_hand_derived(tok):
    """Worked by hand from the tiny vocabulary's layout (make_tiny_checkpoint.py):
    "<start_of_turn>" written in the text is one special piece, id 6, after <bos> = 2; "<bos>" in the text is the
    control piece 2 as well (the reference matches special tokens in the text). Decoding the three byte pieces
    <0xE6> <0x97> <0xA5> gives the UTF-8 encoding of U+65E5 "日"; dropping the last byte leaves an incomplete
    sequence, which decodes to one U+FFFD per byte."""
    assert A.run_encode(tok, "<start_of_turn>") == [2, 6]
    assert A.run_encode(tok, "<bos>", add_bos=False) == [2]
    byte = [tok.piece_to_id["<0x%02X>" % b] for b in (0xE6, 0x97, 0xA5)]
    assert A.run_decode(tok, byte) == "日"
    assert A.run_decode(tok, byte[:2]) == "\ufffd\ufffd"
    assert A.run_decode(tok, [2, 6, 7]) == "<bos><start_of_turn><end_of_turn>"
    assert A.run_decode(tok, [2, 6, 7], skip_special_tokens=True) == ""


def test_missing_tokenizer_model(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        A.load_tokenizer(tmp_path)


def test_corrupt_tokenizer_model(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        A.load_tokenizer(tmp_path)
