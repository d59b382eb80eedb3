"""The Hamiltonian Transformer: energy-penalised attention inside a two-stream symplectic integrator.

    q_0 = p_0 = embed(tokens)
    layer l, dynamics "separable" (H = |p|^2/2 + V_attn(q) + V_mlp(q)), symplectic Euler with step size h_l:
        p <- p + h attention(norm(q));  q <- q + h p;  p <- p + h MLP(norm(q));  q <- q + h p
    logits  = lm_head(norm(p_L))

With dynamics "mlp_velocity" (the first design) the attention is the force and the MLP the velocity:
p <- p + h attention(norm(q)); q <- q + h MLP(norm(p)); p_0 = 0 and the head reads norm(q_L).

Notation: b = batch, t = new tokens, s = past + new tokens, h = heads, d = head dim, D = hidden size,
E = attention evaluations per layer (one per force call of the integrator; each has its own KV-cache slot).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

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
from .cache_conventions import accepts_past_key_values, cache_output, output_cache
from .configuration_hamiltonian import HamiltonianTransformerConfig
from .energy_attention import CacheUpdate, EnergyAttention
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


class LayerOutput(NamedTuple):
    """A layer's output streams (b, t, D), with the attention weights and mean energies of its force evaluations
    (empty unless asked for)."""

    q: torch.Tensor
    p: torch.Tensor
    attentions: tuple[torch.Tensor, ...]
    energies: tuple[torch.Tensor, ...]


class HamiltonianLayer(GradientCheckpointingLayer):
    """One integrator layer: `evolution_steps` substeps of the configured integrator with step h / steps.

    Dynamics "separable": each substep is two integrator steps with the velocity dq/dt = p, the first with the
    attention as the force, the second with the MLP (a splitting of H = |p|^2/2 + V_attn(q) + V_mlp(q)). Dynamics
    "mlp_velocity": one integrator step with the attention as the force and the MLP as the velocity. `force_norm`
    is the norm before the attention and `velocity_norm` the norm before the MLP under either dynamics (the names
    are the first design's, kept so that its checkpoints load).

    The layer reads and writes its own cache entry: cache layer `layer_idx` holds its E attention evaluations' keys
    and values side by side along the head dimension, (b, E*h, s, w).
    """

    def __init__(self, config: HamiltonianTransformerConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.evolution_steps = config.evolution_steps
        self.separable = config.dynamics == "separable"
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

    def forward(
        self,
        q: torch.Tensor,
        p: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        attn_implementation: str = "sdpa",
        output_attentions: bool = False,
        output_energies: bool = False,
        replay: DropoutReplay | None = None,
        inverse: bool = False,
    ) -> LayerOutput:
        """(q, p) (b, t, D) -> the layer's output streams (or, with `inverse=True`, the input that maps to them).

        attention_mask (b, s): 1 for real tokens over the cached and new ones, or None. `replay` gives the reversible
        path its dropout masks; `inverse` (symplectic integrators only) undoes the layer.
        """
        attentions, energies = [], []
        cache_updates, write_cache = self.cache_updates(cache)

        def attention_force(q: torch.Tensor, slot: int) -> torch.Tensor:
            """Attention on the normalised positions (evaluation `slot` of this layer)."""
            with replay(("attention", self.layer_idx, slot)) if replay else nullcontext():
                out, weights, energy = self.attention(
                    self.force_norm(q),
                    position_embeddings,
                    attention_mask,
                    cache_updates[slot] if cache_updates else None,
                    attn_implementation,
                    output_attentions,
                    output_energies,
                )
                out = self.dropout(out)
            if weights is not None:
                attentions.append(weights)
            if energy is not None:
                energies.append(energy.detach())
            return out

        def mlp(x: torch.Tensor, slot: int) -> torch.Tensor:
            """The MLP on the normalised stream x: q for the separable force, p for the first design's velocity."""
            with replay(("mlp", self.layer_idx, slot)) if replay else nullcontext():
                return self.dropout(self.mlp(self.velocity_norm(x)))

        def kinetic_velocity(p: torch.Tensor, slot: int) -> torch.Tensor:
            """dq/dt = dH/dp = p (unit mass)."""
            return p

        # (force, velocity) of each integrator step of a substep
        fields = [(attention_force, kinetic_velocity), (mlp, kinetic_velocity)] if self.separable else [
            (attention_force, mlp)]
        h = self.step_size() / self.evolution_steps
        if inverse:
            for substep in reversed(range(self.evolution_steps)):
                for force, velocity in reversed(fields):
                    q, p = self.inverse_step(q, p, force, velocity, h, substep)
        else:
            for substep in range(self.evolution_steps):
                for force, velocity in fields:
                    q, p = self.step(q, p, force, velocity, h, substep)
        write_cache()
        return LayerOutput(q, p, tuple(attentions), tuple(energies))

    def cache_updates(self, cache: Cache | None) -> tuple[list[CacheUpdate] | None, Callable[[], None]]:
        """One `cache_update` per attention evaluation of this layer, and the function that stores them at the end.

        A single evaluation hands its keys straight to the cache, which returns the history (no copy of it here).
        With several, evaluation e attends to its own slot's history plus its new keys; the new keys of every slot are
        written together once the layer is done, because the cache appends along the sequence for all heads at once.
        """
        if cache is None:
            return None, lambda: None
        if self.num_slots == 1:
            return [partial(cache.update, layer_idx=self.layer_idx)], lambda: None
        layer = cache.layers[self.layer_idx]
        past = None
        if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
            past = list(zip(layer.keys.chunk(self.num_slots, dim=1), layer.values.chunk(self.num_slots, dim=1)))
        new: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def update(slot: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            new[slot] = (key, value)
            if past is None:
                return key, value
            return torch.cat([past[slot][0], key], dim=-2), torch.cat([past[slot][1], value], dim=-2)

        def write() -> None:
            slots = [new[slot] for slot in range(self.num_slots)]
            cache.update(torch.cat([k for k, _ in slots], dim=1), torch.cat([v for _, v in slots], dim=1),
                         self.layer_idx)

        return [partial(update, slot) for slot in range(self.num_slots)], write


class HamiltonianTransformerPreTrainedModel(PreTrainedModel):
    config_class = HamiltonianTransformerConfig
    config: HamiltonianTransformerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HamiltonianLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True  # config._attn_implementation picks the literal formula ("eager") or SDPA ("sdpa")

    def __init__(self, config, *inputs, **kwargs):
        config.validate()  # a config changed after construction must not build a broken model
        super().__init__(config, *inputs, **kwargs)

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

    @accepts_past_key_values
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
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
        if reversible and (output_attentions or output_hidden_states):
            raise ValueError("`output_attentions`/`output_hidden_states` are not available on the reversible path.")
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        cache = cache if use_cache else None
        _check_cache(cache)
        past_length = cache.get_seq_length() if cache is not None else 0

        # 1. inputs: validated before any lookup, so a bad id is an error message rather than an index error
        check_model_inputs(config, input_ids, inputs_embeds, attention_mask, past_length)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        length = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = padding_positions(attention_mask, past_length, length, inputs_embeds.device)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        position_embeddings = self.rotary_emb(position_ids, inputs_embeds.dtype)
        layer_kwargs = dict(
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            attn_implementation=config._attn_implementation,
            output_attentions=output_attentions,
            output_energies=output_energies,
        )

        # 2. the two streams
        q = inputs_embeds
        if config.initial_momentum == "embedding":
            p = inputs_embeds
        elif config.initial_momentum == "learned":
            p = self.momentum_proj(q)
        else:
            p = torch.zeros_like(q)
        reads_momentum = config.dynamics == "separable"  # the head reads p (separable) or q (mlp_velocity)

        # 3. the integrator layers
        all_hidden_states, all_attentions, attention_energies, kinetic_energies = [], [], [], []

        def record(output: LayerOutput) -> tuple[torch.Tensor, torch.Tensor]:
            all_attentions.extend(output.attentions)
            attention_energies.extend(output.energies)
            if output_energies:
                kinetic_energies.append(0.5 * output.p.detach().square().sum(-1).mean())
            return output.q, output.p

        if reversible:
            replay = DropoutReplay(q.device)
            recording = [True]  # backward re-runs the layers: record the forward pass only

            def layer_map(layer: HamiltonianLayer, q: torch.Tensor, p: torch.Tensor, inverse: bool = False):
                output = layer(q, p, **layer_kwargs, replay=replay, inverse=inverse)
                return record(output) if recording[0] and not inverse else (output.q, output.p)

            layer_params = [[w for w in layer.parameters() if w.requires_grad] for layer in self.layers]
            q, p = ReversibleSequence.apply(
                q,
                p,
                [partial(layer_map, layer) for layer in self.layers],
                [partial(layer_map, layer, inverse=True) for layer in self.layers],
                layer_params,
                *[w for params in layer_params for w in params],
            )
            recording[0] = False
        else:
            for layer in self.layers:
                if output_hidden_states:
                    all_hidden_states.append(p if reads_momentum else q)
                # reentrant activation checkpointing hands back a plain tuple: rebuild the named one
                q, p = record(LayerOutput(*layer(q, p, **layer_kwargs, cache=cache)))
        energies = None
        if output_energies:
            energies = {
                "attention_energy": torch.stack(attention_energies).view(len(self.layers), -1).mean(-1),
                "kinetic_energy": torch.stack(kinetic_energies),
                "step_size": torch.stack([layer.step_size().detach() for layer in self.layers]),
            }

        # 4. read out the momenta (separable) or the positions (mlp_velocity)
        hidden_states = self.norm(p if reads_momentum else q)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        return HamiltonianModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
            energies=energies,
            **cache_output(cache),
        )


_SUPPORTED_CACHE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


def _check_cache(cache: Cache | None) -> None:
    """Refuse caches whose layers cannot hold E attention slots side by side (static, quantized, offloaded...)."""
    if cache is None:
        return
    unsupported = sorted({type(layer).__name__ for layer in cache.layers if type(layer) not in _SUPPORTED_CACHE_LAYERS})
    if unsupported:
        raise ValueError(
            f"cache={type(cache).__name__} with {', '.join(unsupported)} layers is not supported by the "
            f"Hamiltonian Transformer: each layer keeps one growing key/value slot per attention evaluation, which "
            f"needs {' or '.join(t.__name__ for t in _SUPPORTED_CACHE_LAYERS)} layers. Pass a DynamicCache (or none); "
            f"in generate(), leave cache_implementation unset or 'dynamic'."
        )


class HamiltonianTransformerForCausalLM(HamiltonianTransformerPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HamiltonianTransformerConfig):
        super().__init__(config)
        self.model = HamiltonianTransformerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @accepts_past_key_values
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
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
            cache=cache,
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
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            energies=outputs.energies,
            **cache_output(output_cache(outputs)),
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

    # transformers' generic forward renames only `past_key_values`; a cache passed as `cache_params` would reach the
    # base model beside `cache=None` and be dropped there. Rename both old names before the generic forward.
    forward = accepts_past_key_values(GenericForSequenceClassification.forward)


__all__ = [
    "HamiltonianTransformerPreTrainedModel",
    "HamiltonianTransformerModel",
    "HamiltonianTransformerForCausalLM",
    "HamiltonianTransformerForSequenceClassification",
]
