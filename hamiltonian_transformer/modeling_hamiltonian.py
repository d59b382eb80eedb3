"""The Hamiltonian Transformer: energy-penalised attention inside a two-stream symplectic integrator.

    q_0 = embed(tokens),  p_0 = 0 (or a learned map of q_0)
    layer l:  (q, p) <- integrator step with step size h_l, force F = attention(norm(q)), velocity G = MLP(norm(p))
    logits  = lm_head(norm(q_L))

Notation: b = batch, t = new tokens, s = past + new tokens, h = heads, d = head dim, D = hidden size,
E = attention evaluations per layer (one per force call of the integrator; each has its own KV-cache slot).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple

from .auto_registration import complete_auto_map
from .configuration_hamiltonian import HamiltonianTransformerConfig
from .energy_attention import EnergyAttention
from .integrators import INTEGRATORS, DropoutReplay, ReversibleSequence
from .layers import MLP, RotaryEmbedding
from .model_inputs import check_model_inputs, padding_positions


@dataclass
class HamiltonianModelOutputWithPast(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus `energies` (with `output_energies=True`): per-layer tensors (num_layers,) of the
    mean attention energy E[H], the mean kinetic energy |p|^2/2 per token after the layer, and the step size h."""

    energies: dict[str, torch.Tensor] | None = None


@dataclass
class HamiltonianCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the per-layer `energies` diagnostics."""

    energies: dict[str, torch.Tensor] | None = None


@dataclass
class LayerInputs:
    """What every force evaluation of one forward pass needs, and what it hands back (per layer, per slot)."""

    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    key_padding_mask: torch.Tensor | None
    past: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    # Layers with a single attention evaluation hand their new keys straight to the cache and attend to what it
    # returns (instead of `past`), which saves a copy of the whole history per token when decoding.
    update_cache: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    output_attentions: bool = False
    output_energies: bool = False
    replay: DropoutReplay | None = None
    new_key_values: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    attentions: list[torch.Tensor] = field(default_factory=list)
    energies: list[torch.Tensor] = field(default_factory=list)


class HamiltonianLayer(GradientCheckpointingLayer):
    """One integrator layer: `evolution_steps` substeps of the configured integrator with step h / steps."""

    def __init__(self, config: HamiltonianTransformerConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.evolution_steps = config.evolution_steps
        self.step, self.inverse_step, _ = INTEGRATORS[config.integrator]
        self.num_slots = config.force_evaluations_per_layer
        self.initial_step_size = config.step_size

        self.force_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = EnergyAttention(
            config.hidden_size,
            config.num_attention_heads,
            energy_lambda=config.energy_lambda,
            energy_alpha=config.energy_alpha,
            energy_beta=config.energy_beta,
            energy_gamma=config.energy_gamma,
            learnable_energy=config.learnable_energy,
            attention_scale=config.attention_scale,
            attention_scale_length=config.attention_scale_length,
            attention_window=config.attention_window,
            attention_dropout=config.attention_dropout,
            bias=config.attention_bias,
        )
        self.velocity_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_act, bias=config.mlp_bias)
        self.dropout = nn.Dropout(config.hidden_dropout)
        log_step_size = torch.tensor(math.log(config.step_size))
        if config.learnable_step_size:
            self.log_step_size = nn.Parameter(log_step_size)
        else:
            self.register_buffer("log_step_size", log_step_size, persistent=False)

    def step_size(self) -> torch.Tensor:
        return self.log_step_size.exp()

    def force(self, q: torch.Tensor, slot: int, inputs: LayerInputs) -> torch.Tensor:
        """F(q): attention on the normalised positions (evaluation `slot` of this layer)."""
        replay = inputs.replay(("force", self.layer_idx, slot)) if inputs.replay else nullcontext()
        with replay:
            out, key_value, weights, energy = self.attention(
                self.force_norm(q),
                inputs.position_embeddings,
                inputs.key_padding_mask,
                inputs.past[slot] if inputs.past else None,
                inputs.output_attentions,
                inputs.output_energies,
                update_cache=inputs.update_cache,
            )
            out = self.dropout(out)
        if inputs.replay is None:  # the reversible path keeps nothing but the final streams
            inputs.new_key_values[slot] = key_value
            if weights is not None:
                inputs.attentions.append(weights)
        if energy is not None:
            inputs.energies.append(energy.detach())
        return out

    def velocity(self, p: torch.Tensor, slot: int, inputs: LayerInputs) -> torch.Tensor:
        """G(p): MLP on the normalised momenta."""
        replay = inputs.replay(("velocity", self.layer_idx, slot)) if inputs.replay else nullcontext()
        with replay:
            return self.dropout(self.mlp(self.velocity_norm(p)))

    def forward(self, q: torch.Tensor, p: torch.Tensor, inputs: LayerInputs) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.step_size() / self.evolution_steps
        force, velocity = partial(self.force, inputs=inputs), partial(self.velocity, inputs=inputs)
        for substep in range(self.evolution_steps):
            q, p = self.step(q, p, force, velocity, h, substep)
        return q, p

    def inverse(self, q: torch.Tensor, p: torch.Tensor, inputs: LayerInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer input that `forward` maps to (q, p) (symplectic integrators only)."""
        h = self.step_size() / self.evolution_steps
        force, velocity = partial(self.force, inputs=inputs), partial(self.velocity, inputs=inputs)
        for substep in reversed(range(self.evolution_steps)):
            q, p = self.inverse_step(q, p, force, velocity, h, substep)
        return q, p


class HamiltonianTransformerPreTrainedModel(PreTrainedModel):
    config_class = HamiltonianTransformerConfig
    config: HamiltonianTransformerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HamiltonianLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, EnergyAttention):
            module.reset_energy_parameters()
        elif isinstance(module, HamiltonianLayer):
            init.constant_(module.log_step_size, math.log(module.initial_step_size))
        elif isinstance(module, RotaryEmbedding):
            module.inv_freq.copy_(module.compute_inv_freq(module.inv_freq.device))

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs) -> None:
        if enable and self.config.reversible:
            raise ValueError(
                "Activation (gradient) checkpointing is for `reversible=False`; with `reversible=True` the layers "
                "already rebuild their activations in backward instead of storing them."
            )
        super()._set_gradient_checkpointing(enable, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        complete_auto_map(self, "HamiltonianTransformer")
        return super().save_pretrained(save_directory, *args, **kwargs)


class HamiltonianTransformerModel(HamiltonianTransformerPreTrainedModel):
    def __init__(self, config: HamiltonianTransformerConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.momentum_proj = (
            nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            if config.initial_momentum == "learned"
            else None
        )
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.layers = nn.ModuleList(HamiltonianLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_energies: bool = False,
        **kwargs,
    ) -> HamiltonianModelOutputWithPast:
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = (config.use_cache if use_cache is None else use_cache) and not self.training
        reversible = config.reversible and self.training and torch.is_grad_enabled()
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=config)
        _check_cache(past_key_values)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0

        # 1. inputs: validated before any lookup, so a bad id is an error message rather than an index error
        check_model_inputs(config, input_ids, inputs_embeds, attention_mask, past_length)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = padding_positions(attention_mask, past_length, length, inputs_embeds.device)
        key_padding_mask = attention_mask.bool() if attention_mask is not None and not attention_mask.all() else None

        # 2. the two streams
        q = inputs_embeds
        p = self.momentum_proj(q) if self.momentum_proj is not None else torch.zeros_like(q)
        inputs = LayerInputs(
            position_embeddings=self.rotary_emb(position_ids, q.dtype),
            key_padding_mask=None,
            output_attentions=output_attentions,
            output_energies=output_energies,
        )

        # 3. the integrator layers
        all_hidden_states = [] if output_hidden_states else None
        kinetic_energies = []

        def run_layer(layer: HamiltonianLayer, q: torch.Tensor, p: torch.Tensor):
            q, p = layer(q, p, inputs)
            if inputs.output_energies:
                kinetic_energies.append(0.5 * p.detach().square().sum(-1).mean())
            return q, p

        if reversible:
            if output_attentions or output_hidden_states:
                raise ValueError("`output_attentions`/`output_hidden_states` are not available on the reversible path.")
            inputs.key_padding_mask = key_padding_mask
            inputs.replay = DropoutReplay(q.device)
            layer_params = [[w for w in layer.parameters() if w.requires_grad] for layer in self.layers]
            q, p = ReversibleSequence.apply(
                q,
                p,
                [partial(run_layer, layer) for layer in self.layers],
                [partial(layer.inverse, inputs=inputs) for layer in self.layers],
                layer_params,
                *[w for params in layer_params for w in params],
            )
            inputs.output_energies = False  # backward re-runs the layers: record the forward pass only
        else:
            for layer in self.layers:
                if output_hidden_states:
                    all_hidden_states.append(q)
                past = _read_cache(past_key_values, layer.layer_idx, layer.num_slots)
                stored = past[0][0].shape[-2] if past else 0
                inputs.key_padding_mask = None if key_padding_mask is None else key_padding_mask[:, -(stored + length):]
                inputs.new_key_values = {}
                inputs.update_cache = None
                if use_cache and layer.num_slots == 1 and config.attention_window is None:
                    inputs.update_cache = partial(past_key_values.update, layer_idx=layer.layer_idx)
                inputs.past = None if inputs.update_cache else past
                q, p = run_layer(layer, q, p)
                if use_cache and inputs.update_cache is None:
                    slots = [inputs.new_key_values[slot] for slot in range(layer.num_slots)]
                    past_key_values.update(
                        torch.cat([k for k, _ in slots], dim=1), torch.cat([v for _, v in slots], dim=1),
                        layer.layer_idx,
                    )
        energies = None
        if output_energies:
            energies = {
                "attention_energy": torch.stack(inputs.energies).view(len(self.layers), -1).mean(-1),
                "kinetic_energy": torch.stack(kinetic_energies),
                "step_size": torch.stack([layer.step_size().detach() for layer in self.layers]),
            }

        # 4. read out the positions
        hidden_states = self.norm(q)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        return HamiltonianModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(inputs.attentions) if output_attentions else None,
            energies=energies,
        )


_SUPPORTED_CACHE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


def _check_cache(cache: Cache | None) -> None:
    """Refuse caches whose layers cannot hold E attention slots side by side (static, quantized, offloaded...)."""
    if cache is None:
        return
    unsupported = sorted({type(layer).__name__ for layer in cache.layers if type(layer) not in _SUPPORTED_CACHE_LAYERS})
    if unsupported:
        raise ValueError(
            f"past_key_values={type(cache).__name__} with {', '.join(unsupported)} layers is not supported by the "
            f"Hamiltonian Transformer: each layer keeps one growing key/value slot per attention evaluation, which "
            f"needs {' or '.join(t.__name__ for t in _SUPPORTED_CACHE_LAYERS)} layers. Pass a DynamicCache (or none); "
            f"in generate(), leave cache_implementation unset or 'dynamic'."
        )


def _read_cache(cache: Cache | None, layer_idx: int, num_slots: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Past (keys, values) of each attention evaluation of a layer: its cache layer holds the E slots side by side
    along the head dimension, (b, E*h, s, d)."""
    if cache is None or layer_idx >= len(cache.layers):
        return None
    layer = cache.layers[layer_idx]
    if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.numel() == 0:
        return None
    return list(zip(layer.keys.chunk(num_slots, dim=1), layer.values.chunk(num_slots, dim=1)))


class HamiltonianTransformerForCausalLM(HamiltonianTransformerPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HamiltonianTransformerConfig):
        super().__init__(config)
        self.model = HamiltonianTransformerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_energies: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> HamiltonianCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_energies=output_energies,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return HamiltonianCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            energies=outputs.energies,
        )


class HamiltonianTransformerForSequenceClassification(
    GenericForSequenceClassification, HamiltonianTransformerPreTrainedModel
):
    """Scores the last non-padding token (transformers' `GenericForSequenceClassification` forward: pooling and the
    regression / single-label / multi-label losses by `problem_type`). The base model is built directly rather than
    through `AutoModel`, so that `trust_remote_code` loading needs no Auto registration."""

    def __init__(self, config: HamiltonianTransformerConfig):
        HamiltonianTransformerPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = HamiltonianTransformerModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()


__all__ = [
    "HamiltonianTransformerPreTrainedModel",
    "HamiltonianTransformerModel",
    "HamiltonianTransformerForCausalLM",
    "HamiltonianTransformerForSequenceClassification",
]
