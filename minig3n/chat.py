"""The Gemma 3n chat format: a list of messages -> the prompt string the instruction-tuned model expects.

The idea: a conversation is flattened into turns, each ``<start_of_turn>ROLE\\n ... <end_of_turn>\\n``, after one
``<bos>``; ``assistant`` is written as ``model``; a system message has no turn of its own but becomes a prefix
(its text + a blank line) of the first user turn; the prompt ends with an open ``<start_of_turn>model\\n`` for
the model to continue. Example::

    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "}]
    ->  "<bos><start_of_turn>user\\nBe brief.\\n\\nHi<end_of_turn>\\n<start_of_turn>model\\n"

Rules, exactly as the official template (``gemma3n_chat_template.jinja``, the ``_CHAT_TEMPLATE`` of transformers'
Gemma 3n weight converter) renders them:

* ``content`` is a string, or a list of parts ``{"type": "text", "text": ...}``, ``{"type": "image"}``,
  ``{"type": "audio"}`` (parts of another type are skipped). Text is stripped of surrounding whitespace
  (jinja ``trim``), each part on its own, and parts are joined with nothing in between.
* The system text is *not* stripped (for list content only its first part is used, whatever its type).
* After the optional system message, roles must alternate user / assistant / user ...; a violation is an
  ``InputError`` (the template raises "Conversation roles must alternate ...").
* An image part becomes ``<image_soft_token>`` and an audio part ``<audio_soft_token>``: one placeholder each.
  The processor then expands every placeholder to the full run the model reads
  (``expand_media_placeholders``): ``"\\n\\n<start_of_image>" + N x "<image_soft_token>" + "<end_of_image>\\n\\n"``
  with N = ``vision_soft_tokens_per_image`` (256 in E2B/E4B), and the same for audio with N =
  ``audio_soft_tokens_per_image`` (188). This is the hook the multimodal pipeline uses.

The prompt's ids are ``tokenizer.encode(prompt, add_bos=False)``: the ``<bos>`` is part of the text, and special
tokens written in the text become their ids (as the reference processor's ``apply_chat_template`` does).

Source: ``docs/gemma3n_chat_template.jinja``; transformers 5.24 ``Gemma3nProcessor``
(``full_image_sequence``, ``full_audio_sequence``). Left out: tools / function calling (the Gemma 3n template
has none), ``continue_final_message``, generation masks.
"""
from __future__ import annotations

from .errors import InputError

BOS = "<bos>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER = "<image_soft_token>", "<audio_soft_token>"
BOI, EOI, BOA, EOA = "<start_of_image>", "<end_of_image>", "<start_of_audio>", "<end_of_audio>"


def _text_of(part) -> str:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise InputError(f"a content part must be a dict with a 'type' key, got {part!r}")
    if part["type"] == "text":
        if not isinstance(part.get("text"), str):
            raise InputError(f"a text part needs a string 'text', got {part!r}")
        return part["text"]
    return ""


def render_content(content) -> str:
    """One message's content as the template writes it: stripped text, media placeholders."""
    if isinstance(content, str):
        return content.strip()
    if not isinstance(content, (list, tuple)):
        raise InputError(f"message content must be a string or a list of parts, got {type(content).__name__}")
    out = []
    for part in content:
        text = _text_of(part)
        if part["type"] == "audio":
            out.append(AUDIO_PLACEHOLDER)
        elif part["type"] == "image":
            out.append(IMAGE_PLACEHOLDER)
        elif part["type"] == "text":
            out.append(text.strip())
    return "".join(out)


def render_chat(messages, add_generation_prompt: bool = True) -> str:
    """The prompt string for ``messages`` (list of {"role", "content"}), as the official template renders it."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"each message must be a dict with 'role' and 'content', got {m!r}")
    prefix, turns = "", list(messages)
    if messages[0]["role"] == "system":
        content = messages[0]["content"]
        if isinstance(content, str):
            prefix = content + "\n\n"
        else:
            if not isinstance(content, (list, tuple)) or not content:
                raise InputError("a system message's content must be a string or a non-empty list of parts")
            prefix = _text_of(content[0]) + "\n\n"
        turns = turns[1:]
    out = [BOS]
    for k, m in enumerate(turns):
        if (m["role"] == "user") != (k % 2 == 0):
            raise InputError("conversation roles must alternate user/assistant/user/... (after an optional "
                             f"system message); message {k + (len(messages) - len(turns))} has role {m['role']!r}")
        role = "model" if m["role"] == "assistant" else m["role"]
        out.append(f"{START_OF_TURN}{role}\n{prefix if k == 0 else ''}{render_content(m['content'])}{END_OF_TURN}\n")
    if add_generation_prompt:
        out.append(f"{START_OF_TURN}model\n")
    return "".join(out)


def check_prompt_choice(prompt=None, chat=None, messages=None, system=None) -> None:
    """A prompt is given one way: exactly one of a raw ``prompt``, a ``chat`` (user text, + optional ``system``)
    or ``messages``; ``system`` belongs to ``chat`` only. Raises InputError naming the arguments."""
    given = [n for n, v in (("prompt", prompt), ("chat", chat), ("messages", messages)) if v is not None]
    if len(given) != 1:
        raise InputError(f"give exactly one of prompt (--prompt), chat (--chat) or messages, got {given or 'none'}")
    if system is not None and chat is None:
        raise InputError("system (--system) needs a chat (--chat): a raw prompt has no system turn")


def chat_messages(user_text: str, system: str | None = None) -> list[dict]:
    """The messages of a one-turn chat (what ``minig3n generate --chat TEXT [--system TEXT]`` sends)."""
    msgs = [{"role": "system", "content": system}] if system is not None else []
    return msgs + [{"role": "user", "content": user_text}]


def encode_chat(tokenizer, messages, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the rendered conversation (``<bos>`` comes from the text, not added again)."""
    return tokenizer.encode(render_chat(messages, add_generation_prompt), add_bos=False)


def expand_media_placeholders(prompt: str, image_tokens: int, audio_tokens: int) -> str:
    """Replace each ``<image_soft_token>`` / ``<audio_soft_token>`` placeholder by the full run the model reads:
    ``"\\n\\n" + BOI + image_tokens x placeholder + EOI + "\\n\\n"`` (likewise for audio), as the processor does."""
    image_run = f"\n\n{BOI}{IMAGE_PLACEHOLDER * image_tokens}{EOI}\n\n"
    audio_run = f"\n\n{BOA}{AUDIO_PLACEHOLDER * audio_tokens}{EOA}\n\n"
    parts = []
    for piece in prompt.split(IMAGE_PLACEHOLDER):
        parts.append(piece.replace(AUDIO_PLACEHOLDER, audio_run))
    return image_run.join(parts)
