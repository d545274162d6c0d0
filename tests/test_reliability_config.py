"""config.json and the safetensors index: every bad value refused with exit 2 and one line naming the file
and the key; absurd sizes refused before anything is allocated."""
import json
import tracemalloc

import pytest

from minig3n.config import Gemma3nConfig
from minig3n.errors import ConfigError
from tests.conftest import WEIGHTS
from tests.reliability import assert_one_line_error, cli, clone

pytestmark = pytest.mark.foundation

NANO = WEIGHTS / "nano-gemma3n"          # text-only layout (keys at the top level)
TINY = WEIGHTS / "tiny-random-gemma3n"   # multimodal layout (text_config, audio_config, vision_config)


def _text(**kv):
    """Patch text keys of the multimodal config."""
    return lambda d: {**d, "text_config": {**d["text_config"], **kv}}


BAD_CONFIG = [
    # (id, checkpoint, config patch, culprits the message must name)
    ("list", NANO, lambda d: [d], ["config.json", "JSON object", "list"]),
    ("not utf8", NANO, b'{"model_type": "gemma3n_text", "x": "\xff\xfe"}', ["config.json", "not UTF-8"]),
    ("not json", NANO, b'{"model_type": ', ["config.json", "not valid JSON"]),
    ("NaN token", NANO, b'{"model_type": "gemma3n_text", "rms_norm_eps": NaN}', ["config.json", "NaN"]),
    ("sliding_window str", NANO, {"sliding_window": "64"}, ["'sliding_window'", "an integer", '"64"']),
    ("sliding_window str mm", TINY, _text(sliding_window="64"), ["'text_config.sliding_window'", "an integer"]),
    ("layers float", NANO, {"num_hidden_layers": 4.0}, ["'num_hidden_layers'", "an integer"]),
    ("layers bool", NANO, {"num_hidden_layers": True}, ["'num_hidden_layers'", "a boolean"]),
    ("layers absurd", NANO, {"num_hidden_layers": 10_000_000}, ["'num_hidden_layers'", "10,000,000", "limit"]),
    ("vocab absurd", NANO, {"vocab_size": 10 ** 12}, ["'vocab_size'", "1,000,000,000,000", "limit"]),
    ("vocab absurd mm", TINY, _text(vocab_size=10 ** 12), ["'text_config.vocab_size'", "limit"]),
    ("hidden absurd", NANO, {"hidden_size": 10 ** 9}, ["'hidden_size'", "limit"]),
    ("intermediate absurd", NANO, {"intermediate_size": 10 ** 9}, ["'intermediate_size'", "limit"]),
    ("rms_norm_eps -1", NANO, {"rms_norm_eps": -1}, ["'rms_norm_eps'", "positive"]),
    ("rms_norm_eps 0", NANO, {"rms_norm_eps": 0}, ["'rms_norm_eps'", "positive"]),
    ("softcap 0", NANO, {"final_logit_softcapping": 0}, ["'final_logit_softcapping'", "positive"]),
    ("softcap -30", NANO, {"final_logit_softcapping": -30.0}, ["'final_logit_softcapping'", "positive"]),
    ("rope_theta 0", NANO, lambda d: {**d, "rope_parameters": {**d["rope_parameters"], "full_attention": {
        "rope_type": "default", "rope_theta": 0}}}, ["'rope_theta'", "positive"]),
    ("rope_theta -1 flat", NANO, lambda d: {**{k: v for k, v in d.items() if k != "rope_parameters"},
                                            "rope_theta": -1.0}, ["'rope_theta'", "positive"]),
    ("rope_parameters list", NANO, {"rope_parameters": []}, []),   # [] is falsy: defaults, fine (checked below)
    ("rope_parameters str", NANO, {"rope_parameters": "x"}, ["'rope_parameters'", "object"]),
    ("eps string", NANO, {"rms_norm_eps": "1e-6"}, ["'rms_norm_eps'", "finite number"]),
    ("layer_types str", NANO, {"layer_types": "sliding_attention"}, ["'layer_types'", "list of strings"]),
    ("intermediate list of str", NANO, {"intermediate_size": ["64"]}, ["'intermediate_size'"]),
    ("eos out of range", NANO, {"eos_token_id": [1, 10 ** 7]}, ["'eos_token_id'", "below vocab_size"]),
    ("text_config list", TINY, lambda d: {**d, "text_config": [1]}, ["'text_config'"]),
    ("audio_config str", TINY, lambda d: {**d, "audio_config": "x"}, ["'audio_config'", "object"]),
    ("audio hidden str", TINY, lambda d: {**d, "audio_config": {**d["audio_config"], "hidden_size": "8"}},
     ["'audio_config.hidden_size'", "an integer"]),
    ("audio eps -1", TINY, lambda d: {**d, "audio_config": {**d["audio_config"], "rms_norm_eps": -1.0}},
     ["'audio_config.rms_norm_eps'", "positive"]),
    ("vision hidden absurd", TINY, lambda d: {**d, "vision_config": {**d["vision_config"], "hidden_size": 10 ** 12}},
     ["'vision_config.hidden_size'"]),
    ("image_token_id str", TINY, {"image_token_id": "5"}, ["'image_token_id'", "an integer"]),
]


@pytest.mark.parametrize("case", [c for c in BAD_CONFIG if c[3]], ids=[c[0] for c in BAD_CONFIG if c[3]])
def test_bad_config_one_line(capsys, tmp_path, case):
    _, src, patch, culprits = case
    d = clone(src, tmp_path / "m", patch)
    tracemalloc.start()
    code, out, err = cli(capsys, "inspect", "--model", d)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert_one_line_error(code, err, "inspect", d / "config.json" if "config.json" not in culprits else "", *culprits)
    # refused before any allocation: the absurd sizes never got as far as a list of 10**7 layers
    assert peak < 20 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB traced before the error"


def test_config_directory(capsys, tmp_path):
    d = clone(NANO, tmp_path / "m")
    (d / "config.json").unlink()
    (d / "config.json").mkdir()
    code, _, err = cli(capsys, "inspect", "--model", d)
    assert_one_line_error(code, err, "inspect", d / "config.json", "is a directory")


def test_empty_rope_parameters_is_default():
    """An empty rope_parameters (the 'list' row above, falsy) means the defaults, as transformers reads it."""
    cfg = Gemma3nConfig.from_dict({"model_type": "gemma3n_text", "rope_parameters": [], "num_hidden_layers": 2,
                                   "num_kv_shared_layers": 0, "layer_types": ["sliding_attention", "full_attention"]})
    assert cfg.text.rope_theta == 1_000_000.0


def test_from_dict_not_a_dict():
    with pytest.raises(ConfigError, match="JSON object, got a list"):
        Gemma3nConfig.from_dict([])


def _index_ckpt(tmp_path, index_bytes):
    d = clone(NANO, tmp_path / "m", **{"model.safetensors": None})
    (d / "model-00001-of-00001.safetensors").symlink_to((NANO / "model.safetensors").resolve())
    (d / "model.safetensors.index.json").write_bytes(index_bytes)
    return d


@pytest.mark.parametrize("index,culprits", [
    (b'{"weight_map": ["model.safetensors"]}', ["'weight_map' must be an object", "list"]),
    (b'{"weight_map": {"model.norm.weight": 5}}', ["'model.norm.weight'", "file name"]),
    (b'{"weight_map": {"model.norm.weight": "../x.safetensors"}}', ["'model.norm.weight'", "file name"]),
    (b'[1]', ["not a safetensors index"]),
    (b'{"weight_map": {"a": "\xff"}}', ["not UTF-8"]),
    (b'{"weight_map": ', ["not valid JSON"]),
], ids=["weight_map list", "shard int", "shard path", "list", "not utf8", "not json"])
def test_bad_index_one_line(capsys, tmp_path, index, culprits):
    d = _index_ckpt(tmp_path, index)
    code, _, err = cli(capsys, "inspect", "--model", d)
    assert_one_line_error(code, err, "inspect", "model.safetensors.index.json", *culprits)


def test_good_index_loads(capsys, tmp_path):
    from minig3n.checkpoint import SafetensorsFile
    names = SafetensorsFile(NANO / "model.safetensors").names
    d = _index_ckpt(tmp_path, json.dumps({"weight_map": {n: "model-00001-of-00001.safetensors"
                                                         for n in names}}).encode())
    code, out, err = cli(capsys, "inspect", "--model", d)
    assert code == 0, err
