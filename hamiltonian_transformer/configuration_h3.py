"""Configuration of H3 (Hungry Hungry Hippos; Dao, Fu et al., ICLR 2023)."""

from __future__ import annotations

from transformers import PreTrainedConfig

from .cache_conventions import LINEAR_LAYERS_COUNT_TOKENS
from .config_checks import ValidatedConfig, check_bool, check_choice, check_divides, check_int, check_number
from .energy_settings import EnergySettings
from .presets import PresetMixin
from .ssm import DISCRETIZATIONS, SSM_INITS


class H3Config(PresetMixin, EnergySettings, ValidatedConfig, PreTrainedConfig):
    r"""
    Configuration of an [`H3Model`]: pre-norm blocks of (H3 mixer or attention) + MLP (or the mixer alone, with
    `intermediate_size=0`). The layers listed in `attn_layer_idx` are the family's attention (`EnergyAttention`, rotary
    positions, lambda = 0 by default, so plain causal attention; set `energy_lambda` > 0 to make them energy
    attention); all others are H3 layers.

    Every field is checked when the config is built and again by `validate()`, which the models run when they are
    built: a value changed afterwards (`config.attn_layer_idx = [7]` in a 2-layer model) is refused there with a
    `ValueError` naming the field, its value and what is allowed. `validate()` also recomputes the derived field
    `layer_types` from `attn_layer_idx` and `num_hidden_layers`, so changing `attn_layer_idx` of a built config moves
    the attention layers (set it, not `layer_types`).

    Args:
        vocab_size (`int`): Number of tokens in the vocabulary.
        hidden_size (`int`): Model width (the paper's `d_model`).
        num_hidden_layers (`int`): Number of blocks (the paper's `n_layer`).
        num_attention_heads (`int`): Heads of the attention layers.
        intermediate_size (`int` or `None`): MLP width; None means `mlp_ratio * hidden_size`; 0 leaves the MLP out
            of every block (the mixer alone, as in Zoology's MQAR models).
        mlp_ratio (`int`): MLP width multiple used when `intermediate_size` is None (4 in the paper).
        hidden_act (`str`): MLP activation (GELU in the paper).
        max_position_embeddings (`int`): Longest sequence the model accepts (past + new tokens).
        rope_theta (`float`): Base of the rotary frequencies of the attention layers.
        initializer_range (`float`): Std of the normal init of linear and embedding weights.
        layer_norm_eps (`float`): Epsilon of the LayerNorms.
        hidden_dropout (`float`): Dropout on each block's mixer and MLP outputs.
        attention_dropout (`float`): Dropout on the attention weights.
        embedding_dropout (`float`): Dropout on the token embeddings.
        d_state (`int`): State size N of the diagonal SSM (N/2 complex modes); even.
        shift_kernel_size (`int` or `None`): Taps of the shift SSM on K; None means `d_state` (as in the paper).
        shift_trainable_b (`bool`): Train the shift SSM's B as well (the H3 code does; its taps are then B
            cross-correlated with C, B starting at e_1). False keeps B = e_1, as the paper describes.
        head_dim (`int`): H3 head size: each head's K~ V^T outer products go through that head's diagonal SSM (1 in
            the paper's 125M-1.3B models, giving out = W_o(Q * SSM(Shift(K) * V))).
        attn_layer_idx (`list[int]`): Layers that are attention instead of H3 ([] for a pure H3 model).
        ssm_init (`str`): "s4d_lin", "s4d_inv" or "legs" (diagonalised HiPPO-LegS).
        discretization (`str`): "bilinear" (the H3 code's default) or "zoh".
        dt_min, dt_max (`float`): Range of the log-uniform init of the SSM step dt.
        ssm_learning_rate (`float` or `None`): Learning rate of the SSM parameters (None: min(1e-3, lr)).
        energy_lambda, energy_alpha, energy_beta, energy_gamma, learnable_energy, attention_scale,
        attention_scale_length: the attention layers' energy settings (see `EnergySettings`; lambda defaults to 0
            here). Their head size is hidden_size / num_attention_heads.
        tie_word_embeddings (`bool`): Share the input embedding and the LM head.
        use_cache (`bool`): Return the recurrent/KV cache by default.
        pad_token_id, bos_token_id, eos_token_id (`int` or `None`): Special token ids.
        layer_types, number_of_conv_states: derived (the cache layers `DynamicCache(config=...)` builds); not to be
            set.
    """

    model_type = "h3"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"d_model": "hidden_size", "n_layer": "num_hidden_layers"}

    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    mlp_ratio: int = 4
    hidden_act: str = "gelu"
    max_position_embeddings: int = 8192
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    embedding_dropout: float = 0.0
    d_state: int = 64
    shift_kernel_size: int | None = None
    shift_trainable_b: bool = False
    head_dim: int = 1
    attn_layer_idx: list[int] | None = None
    ssm_init: str = "s4d_lin"
    discretization: str = "bilinear"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    ssm_learning_rate: float | None = None
    energy_lambda: float = 0.0
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    layer_types: list[str] | None = None
    number_of_conv_states: int = 2

    def __post_init__(self, **kwargs):
        if self.attn_layer_idx is None:
            self.attn_layer_idx = [1, 8] if self.num_hidden_layers == 12 else []
        if self.intermediate_size is None:
            self.intermediate_size = self.mlp_ratio * self.hidden_size
        if self.shift_kernel_size is None:
            self.shift_kernel_size = self.d_state
        self._check_and_derive()
        super().__post_init__(**kwargs)

    @property
    def attention_head_dim(self) -> int:
        """Head size of the attention layers (`head_dim` is the H3 layers' head size)."""
        return self.hidden_size // self.num_attention_heads

    def _check_and_derive(self) -> None:
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "max_position_embeddings", "d_state", "shift_kernel_size", "head_dim", "mlp_ratio"):
            check_int(field, getattr(self, field), minimum=1)
        check_int("intermediate_size", self.intermediate_size, minimum=0)
        if self.d_state % 2:
            raise ValueError(f"`d_state`={self.d_state} must be even (d_state / 2 complex modes).")
        check_divides("hidden_size", self.hidden_size, "head_dim", self.head_dim)
        if not isinstance(self.attn_layer_idx, (list, tuple)):
            raise ValueError(f"`attn_layer_idx`={self.attn_layer_idx!r} must be a list of layer indices.")
        self.attn_layer_idx = list(self.attn_layer_idx)
        for index in self.attn_layer_idx:
            check_int("attn_layer_idx", index, minimum=0, maximum=self.num_hidden_layers - 1)
        if len(set(self.attn_layer_idx)) != len(self.attn_layer_idx):
            raise ValueError(f"`attn_layer_idx`={self.attn_layer_idx} lists a layer twice.")
        if self.attn_layer_idx:
            check_divides("hidden_size", self.hidden_size, "num_attention_heads", self.num_attention_heads)
            if self.attention_head_dim % 2:
                raise ValueError(f"hidden_size / num_attention_heads = {self.attention_head_dim} must be even "
                                 "(rotary positions in the attention layers).")
        check_choice("ssm_init", self.ssm_init, SSM_INITS)
        check_choice("discretization", self.discretization, DISCRETIZATIONS)
        check_number("dt_min", self.dt_min, minimum=0.0, strict=True)
        check_number("dt_max", self.dt_max, minimum=self.dt_min)
        if self.ssm_learning_rate is not None:
            check_number("ssm_learning_rate", self.ssm_learning_rate, minimum=0.0, strict=True)
        check_number("rope_theta", self.rope_theta, minimum=0.0, strict=True)
        for field in ("hidden_dropout", "attention_dropout", "embedding_dropout"):
            check_number(field, getattr(self, field), minimum=0.0, maximum=1.0)
        check_number("initializer_range", self.initializer_range, minimum=0.0)
        check_number("layer_norm_eps", self.layer_norm_eps, minimum=0.0, strict=True)
        for field in ("tie_word_embeddings", "use_cache", "shift_trainable_b"):
            check_bool(field, getattr(self, field))
        # The energy bound depends on the attention layers' head size; without attention layers it does not apply.
        self.check_energy_settings(self.attention_head_dim if self.attn_layer_idx else None)
        # Derived: DynamicCache(config=...) builds a linear-attention cache layer for each H3 layer (conv state 0: the
        # shift buffer, recurrent state 0: the SSM state, conv state 1: the count of tokens seen) and a KV layer for
        # each attention layer.
        self.layer_types = [
            "full_attention" if i in self.attn_layer_idx else "linear_attention" for i in range(self.num_hidden_layers)
        ]
        # Conv state 1 (the token count) only where the release's cache does not count (before 5.25): an unused
        # conv state would break `Cache.crop` (assisted decoding), which visits every state.
        self.number_of_conv_states = 1 if LINEAR_LAYERS_COUNT_TOKENS else 2
