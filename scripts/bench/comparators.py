"""The models the benchmarks compare, built at one shared shape (width, depth, vocabulary, heads, MLP width).

Names (``build_model(name, shape)``):
    hamiltonian:<integrator>[:reversible]   Hamiltonian Transformer, integrator euler / symplectic_euler / leapfrog
    h3[:pure][:no_shift | :shift_b][:safari_init], h3:pure:no_mlp, h3:pure:head2, h3:pure:zoology,
    h3:pure:shift_b:no_mlp, h3:pure:no_mlp:head2
                                            H3: hybrid by default (attention in layer 1, the second; H3 elsewhere),
                                            `pure` without attention layers, `no_shift` with a one-tap shift SSM
                                            (a per-channel scale, so no shift: the S4D-like ablation of the paper),
                                            `shift_b` with the shift SSM's B trained too, as the H3 code does,
                                            `safari_init` with the H3 code's MLP: tanh GELU, and its output matrix
                                            drawn with std initializer_range / sqrt(2 layers) (GPT-2's rescaling),
                                            `no_mlp` without the blocks' MLPs, `head2` with H3 heads of size 2,
                                            `zoology` Zoology's MQAR H3: all three of `shift_b`, `no_mlp` and
                                            `head2`, and state size = the longest sequence (made even); the two
                                            pairs with `no_mlp` tell `shift_b` and `head2` apart
    llama                                   transformers' LlamaForCausalLM, SDPA attention
    mamba                                   transformers' MambaForCausalLM (its CUDA kernels are not used on CPU)

The Hamiltonian Transformer and H3 use the shape as it is. Llama's SwiGLU has three MLP matrices, so its
intermediate size is solved for the parameter count of the (non-reversible symplectic-Euler) Hamiltonian model;
Mamba keeps width, depth and vocabulary and takes the integer `expand` whose parameter count comes closest.
Input and output embeddings are tied everywhere, as in the Hamiltonian Transformer.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, MambaConfig, MambaForCausalLM

from hamiltonian_transformer import (
    PRESETS,
    H3Config,
    H3ForCausalLM,
    HamiltonianTransformerConfig,
    HamiltonianTransformerForCausalLM,
)

INTEGRATORS = ("euler", "symplectic_euler", "leapfrog")
HAMILTONIAN_MODELS = tuple(f"hamiltonian:{name}" for name in INTEGRATORS) + (
    "hamiltonian:symplectic_euler:reversible",
    "hamiltonian:leapfrog:reversible",
)
H3_MODELS = ("h3", "h3:pure", "h3:no_shift", "h3:pure:no_shift", "h3:pure:shift_b", "h3:pure:shift_b:safari_init",
             "h3:pure:no_mlp", "h3:pure:shift_b:no_mlp", "h3:pure:no_mlp:head2", "h3:pure:head2", "h3:pure:zoology")
MODEL_NAMES = HAMILTONIAN_MODELS + H3_MODELS + ("llama", "mamba")


@dataclasses.dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_length: int

    @classmethod
    def from_preset(cls, preset: str, max_length: int) -> ModelShape:
        """The Hamiltonian Transformer preset's sizes, with room for ``max_length`` tokens."""
        sizes = PRESETS["hamiltonian_transformer"].get(preset)
        if sizes is None:
            raise ValueError(f"preset={preset!r} is unknown; choose one of {list(PRESETS['hamiltonian_transformer'])}")
        return cls(
            vocab_size=sizes["vocab_size"],
            hidden_size=sizes["hidden_size"],
            num_layers=sizes["num_hidden_layers"],
            num_heads=sizes["num_attention_heads"],
            intermediate_size=sizes["intermediate_size"],
            max_length=max_length,
        )


def check_model_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"model {name!r} is unknown; choose from {', '.join(MODEL_NAMES)}")


def _family_fields(shape: ModelShape) -> dict[str, int]:
    """The config fields both architectures of the family take from a shape."""
    return dict(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_length,
    )


def _hamiltonian_config(shape: ModelShape, integrator: str, reversible: bool, **overrides: Any):
    return HamiltonianTransformerConfig(
        **_family_fields(shape), integrator=integrator, reversible=reversible, **overrides
    )


def _h3_config(shape: ModelShape, variants: list[str], **overrides: Any):
    extra: dict[str, Any] = {"attn_layer_idx": [] if "pure" in variants else [min(1, shape.num_layers - 1)]}
    if "no_shift" in variants:
        extra["shift_kernel_size"] = 1
    if "zoology" in variants:  # zoology/experiments/paper_configs/iclr24_zoology_figure2/configs.py
        variants = [*variants, "shift_b", "no_mlp", "head2"]
        extra["d_state"] = shape.max_length + shape.max_length % 2
    if "shift_b" in variants:
        extra["shift_trainable_b"] = True
    if "no_mlp" in variants:
        extra["intermediate_size"] = 0
    if "head2" in variants:
        extra["head_dim"] = 2
    if "safari_init" in variants:
        extra["hidden_act"] = "gelu_pytorch_tanh"  # safari's Mlp: F.gelu(approximate="tanh")
    return H3Config(**{**_family_fields(shape), **extra, **overrides})


def _llama_config(shape: ModelShape, intermediate_size: int) -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=shape.max_length,
        tie_word_embeddings=True,
        pad_token_id=None,  # as the family's models: no frozen padding row (token 0 is data in the 5 x 5 recall task)
    )
    config._attn_implementation = "sdpa"
    return config


def _mamba_config(shape: ModelShape, expand: int) -> MambaConfig:
    return MambaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        expand=expand,
        tie_word_embeddings=True,
        pad_token_id=None,
    )


def count_parameters(model_class: type[nn.Module], config) -> int:
    """Parameter count of ``model_class(config)`` without allocating it (built on the meta device)."""
    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


def matched_llama_config(shape: ModelShape) -> LlamaConfig:
    target = count_parameters(HamiltonianTransformerForCausalLM, _hamiltonian_config(shape, "symplectic_euler", False))
    one = count_parameters(LlamaForCausalLM, _llama_config(shape, 1))
    per_unit = count_parameters(LlamaForCausalLM, _llama_config(shape, 2)) - one  # params are linear in the size
    return _llama_config(shape, max(1, 1 + round((target - one) / per_unit)))


def matched_mamba_config(shape: ModelShape) -> MambaConfig:
    target = count_parameters(HamiltonianTransformerForCausalLM, _hamiltonian_config(shape, "symplectic_euler", False))
    candidates = [_mamba_config(shape, expand) for expand in range(1, 9)]
    return min(candidates, key=lambda config: abs(count_parameters(MambaForCausalLM, config) - target))


def model_config(name: str, shape: ModelShape, **overrides: Any):
    """(model class, config) of a benchmark model; ``overrides`` are config fields (any model's, e.g. dropout)."""
    check_model_name(name)
    if name.startswith("hamiltonian:"):
        _, integrator, *flags = name.split(":")
        return HamiltonianTransformerForCausalLM, _hamiltonian_config(shape, integrator, "reversible" in flags,
                                                                      **overrides)
    if name in H3_MODELS:
        return H3ForCausalLM, _h3_config(shape, name.split(":")[1:], **overrides)
    model_class, config = ((LlamaForCausalLM, matched_llama_config(shape)) if name == "llama"
                           else (MambaForCausalLM, matched_mamba_config(shape)))
    unknown = sorted(key for key in overrides if not hasattr(config, key))
    if unknown:
        raise ValueError(f"overrides {unknown} are not fields of {type(config).__name__} ({name!r})")
    for key, value in overrides.items():
        setattr(config, key, value)
    return model_class, config


def build_model(name: str, shape: ModelShape, **overrides: Any) -> nn.Module:
    model_class, config = model_config(name, shape, **overrides)
    model = model_class(config)
    if name.endswith(":safari_init"):
        rescale_mlp_output_init(model)
    return model


@torch.no_grad()
def rescale_mlp_output_init(model: H3ForCausalLM) -> None:
    """Redraws each block's MLP output matrix with std initializer_range / sqrt(2 * layers), as safari's
    ``_init_weights`` does to the parameters named ``fc2.weight`` (its H3 mixer's output, ``output_linear``, keeps
    the plain std: the name does not match)."""
    std = model.config.initializer_range / (2 * model.config.num_hidden_layers) ** 0.5
    for layer in model.model.layers:
        layer.mlp.down_proj.weight.normal_(0.0, std)


def describe(name: str, shape: ModelShape) -> dict[str, Any]:
    """Parameter count and the sizes that differ between architectures, for the reports."""
    model_class, config = model_config(name, shape)
    description: dict[str, Any] = {"parameters": count_parameters(model_class, config), "class": model_class.__name__}
    for field in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "expand",
                  "attn_layer_idx", "shift_kernel_size", "integrator", "reversible", "energy_lambda"):
        if field in vars(config):
            description[field] = getattr(config, field)
    return description


def choice_list(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """argparse type for a comma-separated list of names out of `allowed` (models, sections, stages)."""

    def parse(text: str) -> list[str]:
        values = [part for part in text.split(",") if part]
        unknown = [value for value in values if value not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; choose from {', '.join(allowed)}")
        return values

    return parse


def int_list(positive_sorted: bool = False) -> Callable[[str], list[int]]:
    """argparse type for comma-separated integers (seeds, widths); with ``positive_sorted`` (lengths) they must be
    positive and come back in increasing order."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",") if part]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not positive_sorted:
            return values
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
        return sorted(values)

    return parse
