"""Chat template: minig3n's plain-Python rendering against the reference processor's apply_chat_template."""
import pytest

from minig3n.errors import InputError
from tests.adapters import generation as A
from tests.golden_io import load_golden

pytestmark = pytest.mark.generation


@pytest.fixture(scope="module")
def gold():
    return load_golden("generation_chat").meta


def test_prompts_match_reference(gold):
    assert len(gold["conversations"]) >= 5
    for conv, want in zip(gold["conversations"], gold["prompts"]):
        assert A.run_render_chat(conv) == want


def test_ids_match_reference(tiny_dir, gold):
    tok = A.load_tokenizer(tiny_dir)
    for conv, want in zip(gold["conversations"], gold["ids"]):
        assert A.run_encode_chat(tok, conv) == want


def test_hand_derived():
    """From the template's rules: <bos> first; the system text plus a blank line opens the first user turn;
    user text is trimmed; 'assistant' is written 'model'; the prompt ends with an open model turn."""
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": [{"type": "text", "text": "Bye"}]}]
    assert A.run_render_chat(msgs) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    assert A.run_render_chat(msgs[1:2], add_generation_prompt=False) == "<bos><start_of_turn>user\nHi<end_of_turn>\n"


def test_media_placeholders():
    """One placeholder per image / audio part; the expansion wraps N soft tokens in begin/end markers and blank
    lines, as Gemma3nProcessor's full_image_sequence / full_audio_sequence."""
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What?"}]}]
    prompt = A.run_render_chat(msgs)
    assert prompt == "<bos><start_of_turn>user\n<image_soft_token><audio_soft_token>What?<end_of_turn>\n" \
                     "<start_of_turn>model\n"
    assert A.run_expand_media("a<image_soft_token>b<audio_soft_token>c", 2, 3) == (
        "a\n\n<start_of_image><image_soft_token><image_soft_token><end_of_image>\n\nb"
        "\n\n<start_of_audio><audio_soft_token><audio_soft_token><audio_soft_token><end_of_audio>\n\nc")


@pytest.mark.parametrize("msgs", [
    [{"role": "assistant", "content": "first"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
    [],
    [{"role": "user", "content": 5}],
])
def test_bad_conversations(msgs):
    with pytest.raises(InputError):
        A.run_render_chat(msgs)
