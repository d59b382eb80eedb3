"""hamiltonian_transformer.config_from_flags: override parsing, refusals of keys, types and values, run checks."""

from __future__ import annotations

import pytest
import torch

from hamiltonian_transformer import PRESETS
from hamiltonian_transformer.config_from_flags import (
    build_config,
    check_mixed_precision,
    check_seq_len,
    parse_config_overrides,
)
from tests.script_helpers import MODEL_TYPES


def test_overrides_parse_literals_lists_and_words():
    parsed = parse_config_overrides(
        "hidden_size=64, attn_layer_idx=[0, 1],integrator=leapfrog,reversible=true,attention_window=None,step_size=0.5")
    assert parsed == {"hidden_size": 64, "attn_layer_idx": [0, 1], "integrator": "leapfrog", "reversible": True,
                      "attention_window": None, "step_size": 0.5}
    assert parse_config_overrides(None) == parse_config_overrides("  ") == {}


@pytest.mark.parametrize("text, message", [
    ("hidden_size", "not of the form key=value"),
    ("hidden_size=", "not of the form key=value"),
    ("hidden_size=64,hidden_size=32", "sets 'hidden_size' twice"),
])
def test_malformed_overrides_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_config_overrides(text)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_build_config_applies_preset_then_overrides_then_run_values(model_type):
    config = build_config(model_type, "tiny", {"num_hidden_layers": 3}, vocab_size=300, pad_token_id=1)
    assert config.model_type == model_type
    assert (config.num_hidden_layers, config.vocab_size, config.pad_token_id) == (3, 300, 1)
    assert config.hidden_size == PRESETS[model_type]["tiny"]["hidden_size"]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("overrides, fixed, message", [
    ({"hidden_sise": 64}, {}, "'hidden_sise' is not a field of"),
    ({"hidden_size": "wide"}, {}, r"hidden_size='wide': \w+\.hidden_size must be int"),
    ({"hidden_size": 64.0}, {}, "must be int"),
    ({"layer_norm_eps": True}, {}, "must be float"),
    ({"vocab_size": 500}, {"vocab_size": 300}, r"cannot set \['vocab_size'\]: the run sets them"),
    ({"layer_types": ["full_attention"]}, {}, "does not stick"),
])
def test_build_config_refuses_unknown_keys_wrong_types_and_values_that_do_not_stick(model_type, overrides, fixed,
                                                                                   message):
    with pytest.raises(ValueError, match=message):
        build_config(model_type, "tiny", overrides, **fixed)


def test_build_config_refuses_unknown_model_types_and_presets():
    with pytest.raises(ValueError, match="--model_type 'gpt2' is not of this family"):
        build_config("gpt2", "tiny")
    with pytest.raises(ValueError, match="--preset 'huge' is not a preset of h3; choose from"):
        build_config("h3", "huge")


def test_seq_len_above_the_model_limit_is_refused():
    config = build_config("hamiltonian_transformer", "tiny")
    check_seq_len(config.max_position_embeddings, config)
    with pytest.raises(ValueError, match="above the model's limit max_position_embeddings=512"):
        check_seq_len(config.max_position_embeddings + 1, config)


def test_half_precision_is_refused_on_cpu():
    check_mixed_precision("no", torch.device("cpu"))
    for precision in ("bf16", "fp16"):
        with pytest.raises(ValueError, match=f"--mixed_precision {precision} needs a GPU"):
            check_mixed_precision(precision, torch.device("cpu"))
    with pytest.raises(ValueError, match="choose from no, fp16, bf16"):
        check_mixed_precision("fp8", torch.device("cpu"))
