"""Both configs: every bad field a ValueError naming the field and its value, one shared set of energy settings, and
`validate()` re-checking (and re-deriving) a config changed after construction."""

from __future__ import annotations

import dataclasses
import math

import pytest
from transformers import PreTrainedConfig

from hamiltonian_transformer import H3Config, HamiltonianTransformerConfig
from hamiltonian_transformer.config_checks import check_number
from hamiltonian_transformer.energy_settings import ENERGY_SETTINGS, EnergySettings

CONFIGS = [HamiltonianTransformerConfig, H3Config]


def float_fields(config_class) -> list[str]:
    """The family's own float fields (those of `PreTrainedConfig` itself are transformers' business)."""
    inherited = {field.name for field in dataclasses.fields(PreTrainedConfig)}
    return sorted(field.name for field in dataclasses.fields(config_class)
                  if field.name not in inherited and "float" in str(field.type))


def test_float_fields_are_found():
    assert {"step_size", "energy_lambda", "rope_theta"} <= set(float_fields(HamiltonianTransformerConfig))
    assert {"dt_min", "dt_max", "energy_gamma", "ssm_learning_rate"} <= set(float_fields(H3Config))


@pytest.mark.parametrize("config_class, field", [(cls, name) for cls in CONFIGS for name in float_fields(cls)])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_float_fields_are_refused_naming_field_and_value(config_class, field, value):
    with pytest.raises(ValueError, match=rf"`{field}`={value!r} .*must be"):
        config_class.from_preset("tiny", **{field: value})


def test_check_number_takes_infinity_only_where_a_field_allows_it():
    check_number("limit", math.inf, minimum=0.0, allow_infinite=True)
    with pytest.raises(ValueError, match="`limit`=nan is not allowed"):
        check_number("limit", math.nan, allow_infinite=True)
    with pytest.raises(ValueError, match=r"`limit`=-inf is out of range; it must be >= 0"):
        check_number("limit", -math.inf, minimum=0.0, allow_infinite=True)
    with pytest.raises(ValueError, match="`limit`=inf is not allowed; it must be a finite number"):
        check_number("limit", math.inf)


def test_both_configs_take_the_energy_settings_from_one_definition():
    shared = {field.name: field for field in dataclasses.fields(EnergySettings)}
    assert set(shared) == set(ENERGY_SETTINGS)
    for config_class in CONFIGS:
        assert issubclass(config_class, EnergySettings)
        fields = {field.name: field for field in dataclasses.fields(config_class)}
        for name in ENERGY_SETTINGS:
            assert fields[name].type == shared[name].type
    # Only lambda's default differs: the H3 hybrid's attention layers are plain causal attention by default.
    assert HamiltonianTransformerConfig().energy_lambda == 0.01 and H3Config().energy_lambda == 0.0


@pytest.mark.parametrize("config_class", CONFIGS)
@pytest.mark.parametrize("settings, message", [
    (dict(energy_lambda=1.0, energy_gamma=1.0), r"energy_lambda \* energy_gamma = 1 must be < 1/sqrt\(head_dim\)"),
    (dict(energy_lambda=-0.1), r"`energy_lambda`=-0.1 is out of range; it must be >= 0.0"),
    (dict(learnable_energy=True, energy_lambda=0.0), r"`energy_lambda`=0.0 must be > 0 when `learnable_energy=True`"),
    (dict(attention_scale="log"), r"`attention_scale`='log' is not supported; allowed values: 'standard'"),
    (dict(attention_scale_length=1), r"`attention_scale_length`=1 is out of range; it must be >= 2"),
    (dict(learnable_energy="yes"), r"`learnable_energy`='yes' must be True or False"),
])
def test_both_configs_refuse_the_same_energy_settings_with_the_same_message(config_class, settings, message):
    # Same attention head size in both (hidden 64 / 4 heads = 16) so the bound on lambda * gamma is the same.
    with pytest.raises(ValueError, match=message):
        config_class.from_preset("tiny", hidden_size=64, **settings)


def test_h3_energy_bound_uses_the_attention_layers_head_size_and_needs_attention_layers():
    with pytest.raises(ValueError, match=r"1/sqrt\(head_dim\) = 0.25 \(head_dim=16\)"):
        H3Config.from_preset("tiny", hidden_size=64, num_attention_heads=4, energy_lambda=0.5, energy_gamma=1.0)
    # Without attention layers the energy settings are unused, so only the fields themselves are checked.
    assert H3Config.from_preset("tiny", attn_layer_idx=[], energy_lambda=1.0, energy_gamma=1.0).attn_layer_idx == []


def test_unknown_integrator_is_a_choice_error_at_construction_and_after_it():
    message = r"`integrator`='rk4' is not supported; allowed values: 'euler', 'symplectic_euler', 'leapfrog'"
    with pytest.raises(ValueError, match=message):
        HamiltonianTransformerConfig.from_preset("tiny", integrator="rk4")
    config = HamiltonianTransformerConfig.from_preset("tiny")
    config.integrator = "rk4"
    with pytest.raises(ValueError, match=message):
        config.force_evaluations_per_layer  # noqa: B018  (the property a model reads first)
    with pytest.raises(ValueError, match=message):
        config.validate()


@pytest.mark.parametrize("config_class, field, value, message", [
    (HamiltonianTransformerConfig, "evolution_steps", 0, r"`evolution_steps`=0 is out of range; it must be >= 1"),
    (HamiltonianTransformerConfig, "step_size", math.inf, r"`step_size`=inf is not allowed"),
    (HamiltonianTransformerConfig, "reversible", 1, r"`reversible`=1 must be True or False"),
    (HamiltonianTransformerConfig, "num_attention_heads", 3, r"`hidden_size`=32 must be divisible by "
                                                            r"`num_attention_heads`=3"),
    (H3Config, "attn_layer_idx", [7], r"`attn_layer_idx`=7 is out of range; it must be >= 0 and <= 1"),
    (H3Config, "attn_layer_idx", [1, 1], r"`attn_layer_idx`=\[1, 1\] lists a layer twice"),
    (H3Config, "d_state", 15, r"`d_state`=15 must be even"),
    (H3Config, "energy_lambda", math.nan, r"`energy_lambda`=nan is not allowed"),
])
def test_validate_refuses_a_field_changed_after_construction(config_class, field, value, message):
    config = config_class.from_preset("tiny")
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_save_pretrained_refuses_a_config_broken_after_construction(tmp_path):
    config = HamiltonianTransformerConfig.from_preset("tiny")
    config.evolution_steps = 0
    with pytest.raises(ValueError, match="`evolution_steps`=0"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_validate_recomputes_the_derived_layer_types_from_their_sources():
    h3 = H3Config.from_preset("tiny", num_hidden_layers=3, attn_layer_idx=[1])
    assert h3.layer_types == ["linear_attention", "full_attention", "linear_attention"]
    h3.attn_layer_idx = [0, 2]
    h3.validate()
    assert h3.layer_types == ["full_attention", "linear_attention", "full_attention"]

    hamiltonian = HamiltonianTransformerConfig.from_preset("tiny")
    hamiltonian.num_hidden_layers, hamiltonian.attention_window = 3, 16
    hamiltonian.validate()
    assert hamiltonian.layer_types == ["sliding_attention"] * 3 and hamiltonian.sliding_window == 16


@pytest.mark.parametrize("config_class", CONFIGS)
def test_validate_is_idempotent(config_class):
    config = config_class.from_preset("tiny")
    before = config.to_dict()
    config.validate()
    config.validate()
    assert config.to_dict() == before
