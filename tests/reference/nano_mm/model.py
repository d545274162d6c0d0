"""The nano-gemma3n-mm architecture: nano-gemma3n's decoder + a small MobileNetV5 + a small USM conformer.

* Text decoder: nano-gemma3n's config (weights/nano-gemma3n/config.json) with the vocabulary laid out like
  Gemma 3n's: text ids [0, 4096) (nano's tokenizer, unchanged), then 128 vision ids [4096, 4224) and 128 audio
  ids [4224, 4352), so ``vocab_size`` 4352 and ``vocab_size_per_layer_input`` 4096. The multimodal special
  tokens are nano's user-defined pieces, all in the text range: ``<start_of_turn>`` 4, ``<end_of_turn>`` 5,
  ``<start_of_image>`` 6, ``<end_of_image>`` 7, ``<image_soft_token>`` 8, ``<start_of_audio>`` 9,
  ``<end_of_audio>`` 10, ``<audio_soft_token>`` 11 (the model finds soft tokens by id, so this is allowed; the
  embedders' hard tables then only serve the audio padding row, id 4351).
* Vision: ``mobilenetv5_custom_enc`` (tests/reference/timm_custom.py) on 64 x 64 images: stem 16 (s2, 32 x 32),
  stage 0 ER (s2, 16 x 16), stage 1 UIR (s2, 8 x 8), stage 2 UIR + MQA (s2, 4 x 4), stage 3 UIR + MQA (s2,
  2 x 2); MSFA fuses stages 2 and 3 at 4 x 4 to 2048 channels and pools to 2 x 2: **4 soft tokens per image**.
* Audio: USM conformer, 128 mel bins, SSCP channels (16, 8), hidden 96, 2 layers, 4 heads, the real chunk
  and context sizes; **16 soft tokens per clip** (the encoder gives 1 frame per 160 ms: clips up to 2.56 s;
  the spoken digits are 0.4-1.3 s).
"""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
NANO = REPO / "weights" / "nano-gemma3n"
VT = 4096
V = VT + 256
IMAGE_SIZE = 64
IMAGE_TOKENS = 4
AUDIO_TOKENS = 16
# nano's tokenizer pieces
BOS, EOS, PAD, START_OF_TURN, END_OF_TURN = 2, 1, 0, 4, 5
BOI, EOI, IMAGE_TOKEN, BOA, EOA, AUDIO_TOKEN = 6, 7, 8, 9, 10, 11

ARCH_DEF = [
    ["er_r1_k3_s2_e4_c24", "er_r1_k3_s1_e2_c24"],
    ["uir_r1_a3_k5_s2_e4_c32", "uir_r1_a5_k0_s1_e2_c32", "uir_r1_a0_k3_s1_e2_c32"],
    ["uir_r1_a5_k5_s2_e4_c48", "mqa_r1_k3_h2_v2_s1_d16_c48", "uir_r1_a0_k0_s1_e2_c48"],
    ["uir_r1_a5_k5_s2_e4_c64", "mqa_r1_k3_h2_s1_d16_c64", "uir_r1_a0_k0_s1_e2_c64"],
]
VISION_CFG = dict(architecture="mobilenetv5_custom_enc",
                  model_args={"arch_def": ARCH_DEF, "stem_size": 16, "msfa_output_resolution": 2},
                  hidden_size=2048, vocab_size=128, vocab_offset=VT, do_pooling=False)
AUDIO_CFG = dict(vocab_size=128, vocab_offset=VT + 128, input_feat_size=128, hidden_size=96,
                 conf_num_attention_heads=4, conf_num_hidden_layers=2, sscp_conv_channel_size=[16, 8])


def text_config() -> dict:
    t = json.loads((NANO / "config.json").read_text())
    keep = {k: v for k, v in t.items() if k not in ("architectures", "dtype", "transformers_version", "model_type",
                                                    "torch_dtype", "use_cache")}
    keep.update(vocab_size=V, vocab_size_per_layer_input=VT, eos_token_id=[EOS, END_OF_TURN])
    return keep


def config():
    from tests.reference.timm_custom import register
    register()                                 # the custom MobileNetV5
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nTextConfig, Gemma3nVisionConfig

    return Gemma3nConfig(
        text_config=Gemma3nTextConfig(**text_config()), audio_config=Gemma3nAudioConfig(**AUDIO_CFG),
        vision_config=Gemma3nVisionConfig(**VISION_CFG),
        audio_soft_tokens_per_image=AUDIO_TOKENS, vision_soft_tokens_per_image=IMAGE_TOKENS,
        boi_token_id=BOI, eoi_token_id=EOI, image_token_id=IMAGE_TOKEN,
        boa_token_id=BOA, eoa_token_id=EOA, audio_token_id=AUDIO_TOKEN, tie_word_embeddings=True)


def build(seed: int, init_from_nano: bool = True):
    """A Gemma3nForConditionalGeneration, float32, transformers' init (seeded); the text decoder copied from
    weights/nano-gemma3n (the 256 new multimodal rows of ``embed_tokens`` keep their random init)."""
    import torch
    from safetensors.torch import load_file
    from transformers import Gemma3nForConditionalGeneration

    torch.manual_seed(seed)
    model = Gemma3nForConditionalGeneration(config())
    # the vision tower gets timm's own initialisation (transformers' normal(0, 0.02) is ~6x smaller than timm's
    # fan-in scaled init for these convs; with it the tower's output collapsed to the same vector for every
    # image within a few optimiser steps)
    import timm
    vc = model.config.vision_config
    model.model.vision_tower.timm_model.load_state_dict(
        timm.create_model(vc.architecture, pretrained=False, **vc.model_args).state_dict())
    if init_from_nano:
        nano = load_file(str(NANO / "model.safetensors"))
        lm = model.model.language_model
        own = lm.state_dict()
        with torch.no_grad():
            for name, w in nano.items():
                key = name[len("model."):]
                if key == "embed_tokens.weight":
                    own[key][:VT].copy_(w)
                else:
                    assert own[key].shape == w.shape, (key, own[key].shape, w.shape)
                    own[key].copy_(w)
        missing = set(own) - {n[len("model."):] for n in nano}
        assert not missing, f"text tensors not in nano-gemma3n: {sorted(missing)}"
    return model
