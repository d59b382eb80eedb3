"""H3: Hungry Hungry Hippos (Dao, Fu et al., ICLR 2023), with a few attention layers (the hybrid of the paper).

    h_0 = dropout(embed(tokens))
    block l:  h <- h + dropout(mixer(LayerNorm(h)))      mixer = H3Mixer, or the family's attention at attn_layer_idx
              h <- h + dropout(MLP(LayerNorm(h)))
    logits  = lm_head(LayerNorm(h_L))

Training and prefill run the SSMs as FFT convolutions (O(T log T)); the state after a prompt is computed from the whole
prompt at once; generation then steps each H3 layer in O(1) per token. States live in the transformers Cache: for an H3
layer, conv state 0 is the shift window (the cache appends each chunk's key inputs to it, as for Mamba) and recurrent
state 0 the SSM state (a real view of the complex state); attention layers keep KV. From transformers 5.25 the cache
counts the tokens it has seen; on older releases conv state 1 of the first H3 layer holds that count.

Notation: b = batch, t = new tokens, s = past + new tokens, D = hidden size.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple

from .auto_registration import complete_auto_map
from .cache_conventions import LINEAR_LAYERS_COUNT_TOKENS, accepts_past_key_values, cache_output, output_cache
from .configuration_h3 import H3Config
from .energy_attention import EnergyAttention
from .layers import MLP, RotaryEmbedding
from .model_inputs import check_model_inputs, padding_positions
from .ssm import DiagonalSSM, ShiftSSM, at_least_float32, check_positive_int, check_shape

TOKEN_COUNT_STATE = 1  # before transformers 5.25: conv-state slot of the first H3 layer that counts the tokens seen


def seen_tokens(cache: Cache | None, config: H3Config) -> int:
    """Tokens already in the cache, as its first H3 layer counts them, or the KV length of a pure-attention model."""
    if cache is None:
        return 0
    h3_layers = [i for i, kind in enumerate(config.layer_types) if kind == "linear_attention"]
    if not h3_layers:
        return cache.get_seq_length()
    if h3_layers[0] >= len(cache.layers):
        return 0
    if LINEAR_LAYERS_COUNT_TOKENS:
        return int(cache.get_seq_length(h3_layers[0]))
    count = cache.get_conv_state(h3_layers[0], TOKEN_COUNT_STATE)
    return 0 if count is None else int(count[0, 0, 0])


class H3Mixer(nn.Module):
    """H3 token mixer (Dao, Fu et al., ICLR 2023, section 3.2).

        Q, K, V = x W_q, x W_k, x W_v               heads of size d = head_dim, h = hidden_size / d heads
        K~      = ShiftSSM(K)                        depthwise over hidden_size channels
        S_h     = DiagSSM_h(K~_h (outer) V_h)        each of the d x d products of head h through head h's SSM
        out     = W_o (sum_i Q_h,i S_h,i,j)          contracted over the key index

    As in the H3 code, the d x d products of one head share that head's diagonal SSM (hidden_size / head_dim SSMs);
    with head_dim = 1 this is out = W_o(Q * DiagSSM(ShiftSSM(K) * V)).

    States (no state lives on the module between calls):
        conv_state (b, hidden_size, shift_kernel_size): last shift_kernel_size (masked) K inputs, oldest first.
        ssm_state  (b, hidden_size * head_dim, d_state // 2, 2): the complex diagonal SSM state as a real view,
                   channels ordered (key index i, value index j, head h).
    A call returns the ssm_state after its tokens, and its (masked) K inputs, which the holder of the conv_state
    appends to it: `cache.update_conv_state` does that for a transformers Cache, `ShiftSSM.roll_window` for a tensor.
    """

    def __init__(
        self,
        hidden_size: int,
        head_dim: int = 1,
        d_state: int = 64,
        shift_kernel_size: int = 64,
        shift_trainable_b: bool = False,
        ssm_init: str = "s4d_lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        discretization: str = "bilinear",
        bias: bool = True,
    ):
        super().__init__()
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("head_dim", head_dim)
        if hidden_size % head_dim != 0:
            raise ValueError(f"head_dim={head_dim} is not allowed: it must divide hidden_size={hidden_size}")
        self.hidden_size = hidden_size
        self.head_dim = head_dim
        self.num_heads = hidden_size // head_dim
        self.d_state = d_state
        self.shift_kernel_size = shift_kernel_size
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.shift_ssm = ShiftSSM(hidden_size, shift_kernel_size, trainable_b=shift_trainable_b)
        self.diag_ssm = DiagonalSSM(self.num_heads, d_state, ssm_init, dt_min, dt_max, discretization)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=bias)

    def _outer(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-head outer products of keys and values: k, v (b, hidden, t) -> (b d d, heads, t)."""
        batch, _, seq_len = k.shape
        if self.head_dim == 1:  # the paper's models: a plain product
            return k * v
        k = k.view(batch, self.num_heads, self.head_dim, seq_len).transpose(1, 2)  # (b, d, h, t)
        v = v.view(batch, self.num_heads, self.head_dim, seq_len).transpose(1, 2)  # (b, d, h, t)
        kv = k[:, :, None] * v[:, None, :]  # (b, d_i, d_j, h, t)
        return kv.reshape(batch * self.head_dim**2, self.num_heads, seq_len)

    def _contract(self, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """out_h,j = sum_i q_h,i s_h,i,j: q (b, hidden, t), s (b d d, heads, t) -> (b, hidden, t)."""
        batch, _, seq_len = q.shape
        if self.head_dim == 1:
            return q * s
        s = s.view(batch, self.head_dim, self.head_dim, self.num_heads, seq_len)  # (b, d_i, d_j, h, t)
        q = q.view(batch, self.num_heads, self.head_dim, seq_len).transpose(1, 2)  # (b, d_i, h, t)
        out = (q[:, :, None] * s).sum(1)  # (b, d_j, h, t)
        return out.transpose(1, 2).reshape(batch, self.hidden_size, seq_len)

    def _unpack_ssm_state(self, ssm_state: torch.Tensor, batch: int) -> torch.Tensor:
        """Real cache view (b, hidden * d, n, 2) -> complex (b d d, heads, n)."""
        modes = self.d_state // 2
        check_shape("ssm_state", ssm_state, (batch, self.hidden_size * self.head_dim, modes, 2))
        state = torch.view_as_complex(at_least_float32(ssm_state).contiguous())
        return state.reshape(batch * self.head_dim**2, self.num_heads, modes)

    def _pack_ssm_state(self, state: torch.Tensor, batch: int) -> torch.Tensor:
        """Complex (b d d, heads, n) -> real cache view (b, hidden * d, n, 2)."""
        return torch.view_as_real(state.reshape(batch, self.hidden_size * self.head_dim, self.d_state // 2))

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        conv_state: torch.Tensor | None = None,
        ssm_state: torch.Tensor | None = None,
        return_states: bool = False,
        states_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | list[torch.Tensor] | None]:
        """Parallel (FFT) pass over a chunk, continuing from (conv_state, ssm_state) when given.

        hidden_states: (b, t, hidden); padding_mask: (b, t), 1 / True for real tokens, or None.
        Returns (out (b, t, hidden), K inputs (b, hidden, t) to append to conv_state, new ssm_state); the last two are
        None unless return_states. With states_to_keep = n > 0 the SSM state is instead the list of the states after
        each of the last min(n, t) + 1 tokens (oldest first; the state before the chunk stands for "after token 0"),
        from which a cache recording its past (assisted decoding) can roll back by up to n tokens: it keeps all but
        the last as history, and a chunk may be longer than n (prompt lookup's first call: prompt and candidates).
        """
        batch, seq_len, _ = hidden_states.shape
        # 1. projections
        q = self.q_proj(hidden_states).transpose(1, 2)  # (b, hidden, t)
        k = self.k_proj(hidden_states).transpose(1, 2)
        v = self.v_proj(hidden_states).transpose(1, 2)
        if padding_mask is not None:
            check_shape("padding_mask", padding_mask, (batch, seq_len))
            # Zero keys and values of padding so it adds nothing to the shift window or the SSM state.
            mask = padding_mask.to(k.dtype)[:, None, :]  # (b, 1, t)
            k, v = k * mask, v * mask
        # 2. shift SSM over the keys
        k_shift = self.shift_ssm(k, conv_state)  # (b, hidden, t)
        # 3. diagonal SSM over the key-value products
        kv = self._outer(k_shift, v)  # (b d d, heads, t)
        initial_state = None if ssm_state is None else self._unpack_ssm_state(ssm_state, batch)
        s = self.diag_ssm(kv, initial_state)  # (b d d, heads, t)
        # 4. contraction with the queries, output projection
        out = self.o_proj(self._contract(q, s).transpose(1, 2).to(hidden_states.dtype))  # (b, t, hidden)
        if not return_states:
            return out, None, None
        if states_to_keep <= 0:
            return out, k, self._pack_ssm_state(self.diag_ssm.final_state(kv, initial_state), batch)
        split = seq_len - min(states_to_keep, seq_len)  # the states after tokens split, ..., seq_len
        state = self.diag_ssm.final_state(kv[..., :split], initial_state)  # no tokens: the initial state, or zeros
        states = [self._pack_ssm_state(state, batch)]
        for t in range(split, seq_len):
            _, state = self.diag_ssm.step(kv[..., t], state)
            states.append(self._pack_ssm_state(state, batch))
        return out, k, states

    def step(
        self,
        hidden_states: torch.Tensor,
        conv_state: torch.Tensor | None = None,
        ssm_state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token, O(1) in the context length. hidden_states: (b, 1, hidden) or (b, hidden).

        Returns (out shaped like hidden_states, K input (b, hidden, 1) to append to conv_state, new ssm_state); None
        states start from zeros.
        """
        if hidden_states.dim() == 3 and hidden_states.shape[1] != 1:
            raise ValueError(f"step takes one token, got hidden_states of shape {tuple(hidden_states.shape)}")
        batch = hidden_states.shape[0]
        x = hidden_states.reshape(batch, self.hidden_size)
        # 1. projections
        q, k, v = self.q_proj(x)[..., None], self.k_proj(x)[..., None], self.v_proj(x)[..., None]  # (b, hidden, 1)
        # 2. shift SSM over the keys
        window = self.shift_ssm.roll_window(conv_state, k)  # (b, hidden, shift_kernel_size)
        k_shift = self.shift_ssm.step(window)[..., None]  # (b, hidden, 1)
        # 3. diagonal SSM over the key-value products
        kv = self._outer(k_shift, v)[..., 0]  # (b d d, heads)
        state = None if ssm_state is None else self._unpack_ssm_state(ssm_state, batch)
        s, state = self.diag_ssm.step(kv, state)  # (b d d, heads)
        # 4. contraction with the queries, output projection
        out = self.o_proj(self._contract(q, s[..., None])[..., 0].to(hidden_states.dtype))  # (b, hidden)
        return out.view_as(hidden_states), k, self._pack_ssm_state(state, batch)


class H3Block(GradientCheckpointingLayer):
    """Pre-norm residual block: mixer (H3 or attention) then MLP (none when `intermediate_size` is 0)."""

    def __init__(self, config: H3Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.is_attention = layer_idx in config.attn_layer_idx
        self.mixer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if self.is_attention:
            self.mixer = EnergyAttention(
                config.hidden_size,
                config.num_attention_heads,
                energy_lambda=config.energy_lambda,
                energy_alpha=config.energy_alpha,
                energy_beta=config.energy_beta,
                energy_gamma=config.energy_gamma,
                learnable_energy=config.learnable_energy,
                attention_scale=config.attention_scale,
                attention_scale_length=config.attention_scale_length,
                attention_dropout=config.attention_dropout,
            )
        else:
            self.mixer = H3Mixer(
                config.hidden_size,
                head_dim=config.head_dim,
                d_state=config.d_state,
                shift_kernel_size=config.shift_kernel_size,
                shift_trainable_b=config.shift_trainable_b,
                ssm_init=config.ssm_init,
                dt_min=config.dt_min,
                dt_max=config.dt_max,
                discretization=config.discretization,
            )
        self.mlp_norm = self.mlp = None
        if config.intermediate_size:
            self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        past_length: int,
        attn_implementation: str = "sdpa",
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (b, t, D); attention_mask (b, past + t) 1 for real tokens, or None. Each block reads and
        writes its own cache layer `layer_idx`."""
        x = self.mixer_norm(hidden_states)
        if self.is_attention:
            mixed, weights = self.attend(
                x, position_embeddings, attention_mask, cache, past_length, attn_implementation, output_attentions
            )
        else:
            mixed, weights = self.h3(x, attention_mask, cache), None
        hidden_states = hidden_states + self.dropout(mixed)
        if self.mlp is not None:
            hidden_states = hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))
        return hidden_states, weights

    def attend(
        self, x, position_embeddings, attention_mask, cache, past_length: int, attn_implementation: str,
        output_attentions: bool,
    ):
        cache_update = None
        if cache is not None:
            filled = past_length + x.shape[1]

            def cache_update(key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                # The cache appends the new tokens and returns the history; a static layer returns all its
                # max_cache_len slots, of which the first `filled` hold tokens.
                keys, values = cache.update(key, value, self.layer_idx)
                return keys[:, :, :filled], values[:, :, :filled]

        out, weights, _ = self.mixer(
            x, position_embeddings, attention_mask, cache_update, attn_implementation, output_attentions
        )
        return out, weights

    def h3(self, x: torch.Tensor, attention_mask, cache: Cache | None) -> torch.Tensor:
        length = x.shape[1]
        conv_state = ssm_state = None
        states_to_keep = 0
        if cache is not None:
            conv_state = cache.get_conv_state(self.layer_idx)
            ssm_state = cache.get_recurrent_state(self.layer_idx)
            width = self.mixer.shift_kernel_size
            if conv_state is not None and conv_state.shape[-1] != width:
                # A cache recording its past for assisted decoding (transformers >= 5.25) keeps every appended input,
                # unpadded, until it is cropped: the shift window is its last `width` columns (zeros before the first).
                conv_state = nn.functional.pad(conv_state[..., -width:], (max(0, width - conv_state.shape[-1]), 0))
            if hasattr(cache, "get_recurrent_states_to_keep"):
                states_to_keep = cache.get_recurrent_states_to_keep(self.layer_idx)
        padding_mask = None if attention_mask is None else attention_mask[:, -length:]
        if padding_mask is not None and bool(padding_mask.all()):
            padding_mask = None
        if cache is not None and conv_state is not None and length == 1 and padding_mask is None:
            out, conv_inputs, ssm_state = self.mixer.step(x, conv_state, ssm_state)
        else:
            out, conv_inputs, ssm_state = self.mixer(
                x, padding_mask, conv_state, ssm_state, return_states=cache is not None, states_to_keep=states_to_keep
            )
        if cache is not None:
            # The cache appends the chunk's K inputs to the shift window, keeps its last shift_kernel_size columns and
            # (transformers >= 5.25) counts them as tokens seen.
            cache.update_conv_state(conv_inputs, self.layer_idx, conv_kernel_size=self.mixer.shift_kernel_size)
            cache.update_recurrent_state(ssm_state, self.layer_idx)
        return out


class H3PreTrainedModel(PreTrainedModel):
    config_class = H3Config
    config: H3Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["H3Block"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True  # config._attn_implementation picks the attention layers' literal path or SDPA
    # transformers < 5.25 refuses assisted decoding for stateful models (`_is_stateful`); 5.25 dropped the attribute
    # and rolls linear-attention caches back instead, which H3 layers support there (per-token SSM states on request).
    _is_stateful = not LINEAR_LAYERS_COUNT_TOKENS

    def __init__(self, config, *inputs, **kwargs):
        config.validate()  # a config changed after construction must not build a broken model
        super().__init__(config, *inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, EnergyAttention):
            module.reset_energy_parameters()
        elif isinstance(module, RotaryEmbedding):
            module.inv_freq.copy_(module.compute_inv_freq(module.inv_freq.device))
        elif isinstance(module, (ShiftSSM, DiagonalSSM)) and not _loaded(module):
            module.reset_parameters()

    def save_pretrained(self, save_directory, *args, **kwargs):
        complete_auto_map(self, "H3")
        return super().save_pretrained(save_directory, *args, **kwargs)


def _loaded(module: nn.Module) -> bool:
    """Whether transformers has already filled this module's parameters (from a checkpoint)."""
    return all(getattr(p, "_is_hf_initialized", False) for p in module.parameters(recurse=False))


class H3Model(H3PreTrainedModel):
    def __init__(self, config: H3Config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_dropout = nn.Dropout(config.embedding_dropout)
        self.rotary_emb = RotaryEmbedding(config.hidden_size // config.num_attention_heads, config.rope_theta)
        self.layers = nn.ModuleList(H3Block(config, i) for i in range(config.num_hidden_layers))
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
        **kwargs,
    ) -> BaseModelOutputWithPast:
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = (config.use_cache if use_cache is None else use_cache) and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        cache = cache if use_cache else None
        past_length = seen_tokens(cache, config)

        # 1. inputs
        check_model_inputs(config, input_ids, inputs_embeds, attention_mask, past_length)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = padding_positions(attention_mask, past_length, length, inputs_embeds.device)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        position_embeddings = self.rotary_emb(position_ids, inputs_embeds.dtype)

        # 2. blocks
        hidden_states = self.embed_dropout(inputs_embeds)
        all_hidden_states, all_attentions = [], []
        for block in self.layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states, weights = block(
                hidden_states, position_embeddings, attention_mask, cache, past_length, config._attn_implementation,
                output_attentions,
            )
            if weights is not None:
                all_attentions.append(weights)
        if cache is not None and "linear_attention" in config.layer_types and not LINEAR_LAYERS_COUNT_TOKENS:
            first_h3 = config.layer_types.index("linear_attention")
            count = torch.full((batch, 1, 1), past_length + length, dtype=torch.long, device=hidden_states.device)
            cache.update_conv_state(count, first_h3, TOKEN_COUNT_STATE)

        # 3. output
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
            **cache_output(cache),
        )


class H3ForCausalLM(H3PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: H3Config):
        super().__init__(config)
        self.model = H3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _supports_default_dynamic_cache(self) -> bool:
        # From transformers 5.25 a cache of only linear-attention layers counts its tokens, so generate() may build it
        # (which assisted decoding needs: it refuses to run without a prepared cache).
        if LINEAR_LAYERS_COUNT_TOKENS:
            return True
        # generate() asks a cache it prepares for its length, which transformers 5.x refuses for a cache of only
        # linear-attention layers. A pure H3 model therefore builds DynamicCache(config=...) itself on the first
        # forward, and generate() carries it on from the outputs (Mamba escapes the same check by naming its cache
        # `cache_params`). Its layers are the same LinearAttentionLayer in a static cache, so nothing is lost.
        return "full_attention" in self.config.layer_types

    @accepts_past_key_values
    def prepare_inputs_for_generation(
        self, input_ids, next_sequence_length=None, cache=None, attention_mask=None, inputs_embeds=None, **kwargs
    ):
        # `inputs_embeds` is named, not left in **kwargs: generate() looks for it in this signature and otherwise
        # refuses `generate(inputs_embeds=...)` ("doesn't have its forwarding implemented").
        # transformers 5.24's generate() continuing from a cache of only linear-attention layers (pure H3) passes the
        # whole sequence, because such a cache has no get_seq_length() there; feed the model only the unseen tokens.
        if next_sequence_length is None and cache is not None:
            seen = seen_tokens(cache, self.config)
            if 0 < seen < input_ids.shape[1]:
                next_sequence_length = input_ids.shape[1] - seen
        # A cache of linear-attention layers counts as compilable, for which generate() turns the 2D padding mask into
        # 4D causal masks; the H3 layers need the 2D mask (which tokens are padding), the attention layers build theirs.
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length, attention_mask=None, inputs_embeds=inputs_embeds, **cache_output(cache),
            **kwargs,
        )
        model_inputs["attention_mask"] = attention_mask
        return model_inputs

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
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **cache_output(output_cache(outputs)),
        )


class H3ForSequenceClassification(GenericForSequenceClassification, H3PreTrainedModel):
    """Scores the last non-padding token (transformers' `GenericForSequenceClassification` forward); the base model is
    built directly, so `trust_remote_code` loading needs no Auto registration."""

    def __init__(self, config: H3Config):
        H3PreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = H3Model(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    # transformers' generic forward renames only `past_key_values`; a cache passed as `cache_params` (Mamba's old
    # name, the one transformers' own BC test uses for a cache of only linear-attention layers) would reach the base
    # model beside `cache=None` and be dropped there. Rename both old names before the generic forward.
    forward = accepts_past_key_values(GenericForSequenceClassification.forward)


__all__ = ["H3PreTrainedModel", "H3Model", "H3ForCausalLM", "H3ForSequenceClassification"]
