"""Configuration of the Hamiltonian Transformer."""

from __future__ import annotations

from transformers import PreTrainedConfig

from .config_checks import ValidatedConfig, check_bool, check_choice, check_divides, check_int, check_number
from .energy_settings import EnergySettings
from .integrators import INTEGRATORS
from .presets import PresetMixin

INITIAL_MOMENTA = ("embedding", "zero", "learned")
# dynamics -> what the layers integrate (see `HamiltonianLayer`), and the default initial momentum p0
DYNAMICS = {"separable": "embedding", "mlp_velocity": "zero"}
LEGACY_DYNAMICS = "mlp_velocity"  # what a saved config without a `dynamics` field was trained with


class HamiltonianTransformerConfig(PresetMixin, EnergySettings, ValidatedConfig, PreTrainedConfig):
    r"""
    Configuration of a [`HamiltonianTransformerModel`]: energy-penalised attention inside a two-stream (q, p)
    symplectic integrator. Positions are rotary (RoPE): rotations keep `|k|`, so the energy term is unchanged by them.
    `max_position_embeddings` is enforced: longer inputs raise a `ValueError`.

    The physics (`dynamics`). Every token is a particle with a position q and a momentum p in R^D, both starting at
    its embedding; a layer moves all of them for a time h (its learned step size) under Hamilton's equations.

    - "separable" (the default): H(q, p) = |p|^2 / 2 + V_attn(q) + V_mlp(q), unit mass. The attention (which couples
      the particles, each token's force depending on the others' positions) and the MLP (a force field acting on each
      token alone) are the two forces -dV/dq; the velocity dq/dt is p itself. A layer is the splitting
      "kick p with the attention, drift q, kick p with the MLP, drift q" (for `integrator="symplectic_euler"`), so p
      accumulates every sublayer's output, as a transformer's residual stream does, and the head reads norm(p).
      Every map is a shear, det J = 1, and the layer inverts exactly.
    - "mlp_velocity" (the first design, kept for its checkpoints): the attention is the force on p and
      the MLP is the velocity of q, dq/dt = MLP(p); p0 = 0, the head reads norm(q). It learns worse: the last attention
      reaches the head only through an MLP (induction head 0.1 where Llama reaches 1.0; see the README's ablation).

    A saved config without the `dynamics` field (written before it existed) loads as "mlp_velocity", the dynamics its
    weights were trained with.

    Every field is checked when the config is built and again by `validate()`, which the models run when they are
    built: a value changed afterwards (`config.evolution_steps = 0`) is refused there with a `ValueError` naming the
    field, its value and what is allowed. `validate()` also recomputes the derived fields `layer_types` and
    `sliding_window` from `attention_window` and `num_hidden_layers` (so set those, not the derived fields).

    Args:
        vocab_size (`int`): Number of tokens in the vocabulary.
        hidden_size (`int`): Width D of both streams q and p.
        num_hidden_layers (`int`): Number of integrator layers.
        num_attention_heads (`int`): Attention heads; must divide `hidden_size`.
        intermediate_size (`int`): Width of the MLP (the second force, or the velocity with "mlp_velocity").
        hidden_act (`str`): MLP activation.
        max_position_embeddings (`int`): Longest sequence the model accepts (past + new tokens).
        rope_theta (`float`): Base of the rotary frequencies.
        initializer_range (`float`): Std of the normal init of linear and embedding weights.
        layer_norm_eps (`float`): Epsilon of the LayerNorms.
        hidden_dropout (`float`): Dropout on the force and velocity outputs (replayed exactly in reversible backward).
        attention_dropout (`float`): Dropout on the attention weights.
        attention_bias (`bool`): Bias in the q/k/v/o projections.
        mlp_bias (`bool`): Bias in the MLP.
        energy_lambda, energy_alpha, energy_beta, energy_gamma, learnable_energy, attention_scale,
        attention_scale_length: the energy settings of the attention (see `EnergySettings`). lambda defaults to
            0.01: at 0.1 (the first default) the model stays at chance on multi-query associative recall where Llama
            and lambda = 0.01 reach 0.998+ (the README's ablation); learnable coefficients from 0.1 stay at chance too.
        attention_window (`int` or `None`): Sliding-window attention over the last `attention_window` tokens
            (O(T * window) time and memory); None for full causal attention.
        dynamics (`str`): "separable" or "mlp_velocity" (see above).
        integrator (`str`): "euler" (literal, not invertible), "symplectic_euler" or "leapfrog".
        evolution_steps (`int`): Integrator substeps per layer (1-5), sharing the layer's weights, step h/steps each.
        step_size (`float`): Initial step size h of every layer.
        learnable_step_size (`bool`): Learn log h per layer.
        initial_momentum (`str` or `None`): p0 = the embedding ("embedding"), 0 ("zero") or a learned linear map of
            the embeddings ("learned"); None picks the dynamics' own ("embedding" for "separable", "zero" for
            "mlp_velocity").
        reversible (`bool`): In training, backpropagate by reconstructing layer inputs instead of storing activations.
        tie_word_embeddings (`bool`): Share the input embedding and the LM head.
        use_cache (`bool`): Return the KV cache by default.
        pad_token_id, bos_token_id, eos_token_id (`int` or `None`): Special token ids.
        layer_types, sliding_window: derived (the cache layers `DynamicCache(config=...)` builds); not to be set.
    """

    model_type = "hamiltonian_transformer"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 8192
    hidden_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    hidden_act: str = "gelu"
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    attention_bias: bool = False
    mlp_bias: bool = True
    energy_lambda: float = 0.01
    attention_window: int | None = None
    dynamics: str = "separable"
    integrator: str = "symplectic_euler"
    evolution_steps: int = 1
    step_size: float = 1.0
    learnable_step_size: bool = True
    initial_momentum: str | None = None
    reversible: bool = False
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    layer_types: list[str] | None = None
    sliding_window: int | None = None

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As `PreTrainedConfig.from_dict`; a config saved before `dynamics` existed keeps the dynamics of its
        weights (`LEGACY_DYNAMICS`) instead of taking today's default."""
        if config_dict.get("model_type") == cls.model_type and "dynamics" not in config_dict:
            config_dict = {**config_dict, "dynamics": LEGACY_DYNAMICS}
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        self._check_and_derive()
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def force_evaluations_per_layer(self) -> int:
        """Attention calls per layer (each with its own KV-cache slot)."""
        check_choice("integrator", self.integrator, INTEGRATORS)
        return INTEGRATORS[self.integrator][2] * self.evolution_steps

    def _check_and_derive(self) -> None:
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings"):
            check_int(field, getattr(self, field), minimum=1)
        check_divides("hidden_size", self.hidden_size, "num_attention_heads", self.num_attention_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim = hidden_size / num_attention_heads = {self.head_dim} must be even (RoPE).")
        check_choice("integrator", self.integrator, INTEGRATORS)
        check_choice("dynamics", self.dynamics, DYNAMICS)
        if self.initial_momentum is None:
            self.initial_momentum = DYNAMICS[self.dynamics]
        check_choice("initial_momentum", self.initial_momentum, INITIAL_MOMENTA)
        check_int("evolution_steps", self.evolution_steps, minimum=1, maximum=5)
        if self.attention_window is not None:
            check_int("attention_window", self.attention_window, minimum=1)
        for field in ("attention_bias", "mlp_bias", "learnable_step_size", "reversible", "tie_word_embeddings",
                      "use_cache"):
            check_bool(field, getattr(self, field))
        if self.reversible and INTEGRATORS[self.integrator][1] is None:
            invertible = [name for name, (_, inverse, _) in INTEGRATORS.items() if inverse is not None]
            raise ValueError(
                f"`reversible=True` needs an invertible integrator, but `integrator`={self.integrator!r} is not; "
                f"use one of {invertible}."
            )
        check_number("step_size", self.step_size, minimum=0.0, strict=True)
        check_number("rope_theta", self.rope_theta, minimum=0.0, strict=True)
        for field in ("hidden_dropout", "attention_dropout"):
            check_number(field, getattr(self, field), minimum=0.0, maximum=1.0)
        check_number("initializer_range", self.initializer_range, minimum=0.0)
        check_number("layer_norm_eps", self.layer_norm_eps, minimum=0.0, strict=True)
        self.check_energy_settings(self.head_dim)
        # Derived: the cache layers transformers builds from `DynamicCache(config=...)`.
        self.sliding_window = self.attention_window
        kind = "full_attention" if self.attention_window is None else "sliding_attention"
        self.layer_types = [kind] * self.num_hidden_layers
