"""Energy-penalised ("Hamiltonian") attention.

    scores_ij = <q_i, k_j> / sqrt(d) - lambda * H(q_i, k_j),   H(q, k) = alpha |q|^2 + beta |k|^2 + gamma <q, k>
    out_i     = sum_j softmax_j(scores_ij) v_j

Softmax ignores a per-row constant, so the `alpha |q_i|^2` term cancels and

    scores_ij = c <q_i, k_j> - lambda beta |k_j|^2,   c = 1/sqrt(d) - lambda gamma,

which is plain scaled-dot-product attention (scale 1) on the augmented vectors
`q~ = [c q, -lambda beta, 0...]` and `k~ = [k, |k|^2, 0...]` (zero-padded to a multiple of 8 for the fused kernels).
The energy term therefore runs through `torch.nn.functional.scaled_dot_product_attention` at the cost of standard
attention; the literal T x T formula (`energy_attention_ref`) is kept beside it as the reference and as the eager path
for `output_attentions=True`.

`c` must stay positive, or attention would prefer dissimilar keys. Fixed coefficients are checked at config
construction (`lambda * gamma < 1/sqrt(d)`); learnable ones parametrise `c = (2/sqrt(d)) * sigmoid(rho)`, so
`c` lies in (0, 2/sqrt(d)) (equivalently `-1/sqrt(d) < lambda gamma < 1/sqrt(d)`), and `lambda = softplus(.) > 0`.
`alpha` never changes the output; it is kept (always fixed, never learned) for fidelity to the formula and for the
energy diagnostic.

Notation: b = batch, h = heads, t = query tokens, s = key tokens, d = head dim, e = value dim, D = hidden size.
Masks are boolean, True where a query may attend to a key.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .layers import apply_rotary

ATTENTION_SCALES = ("standard", "entropy_invariant")


# ----------------------------------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------------------------------
def build_attention_mask(
    query_length: int,
    key_length: int,
    key_padding_mask: torch.Tensor | None = None,
    window: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Causal (optionally sliding-window) mask for queries that are the last `query_length` of `key_length` tokens.

    key_padding_mask (b, s): True/1 for real tokens. Query i (absolute position p_i) sees key j iff
    j <= p_i, j > p_i - window (if a window is set) and key j is real. Rows that see nothing (queries at padding
    positions) are allowed their own position, so every output stays finite and padding never reaches real tokens.

    Returns None when `is_causal` alone describes the mask (no padding, no window, no past), else (b or 1, 1, t, s).
    """
    past_length = key_length - query_length
    if key_padding_mask is None and window is None and (past_length == 0 or query_length == 1):
        return None
    query_positions = torch.arange(query_length, device=device) + past_length  # (t,)
    key_positions = torch.arange(key_length, device=device)  # (s,)
    relative = query_positions[:, None] - key_positions[None, :]  # (t, s)
    mask = relative >= 0
    if window is not None:
        mask = mask & (relative < window)
    mask = mask[None, None]  # (1, 1, t, s)
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :].to(device=mask.device, dtype=torch.bool)
    empty_rows = ~mask.any(dim=-1, keepdim=True)
    return mask | (empty_rows & (relative == 0))


def visible_key_counts(mask: torch.Tensor | None, query_length: int, key_length: int, device) -> torch.Tensor:
    """Number of keys each query sees: (b or 1, 1, t, 1) float."""
    if mask is not None:
        return mask.sum(dim=-1, keepdim=True).float()
    past_length = key_length - query_length
    return (torch.arange(query_length, device=device) + past_length + 1).float().view(1, 1, -1, 1)


def entropy_invariant_scale(key_counts: torch.Tensor, base_length: int) -> torch.Tensor:
    """Per-row logit multiplier max(1, log n / log base_length) (entropy-invariant attention, Chiang & Cholak 2022)."""
    return torch.clamp(torch.log(key_counts) / math.log(base_length), min=1.0)


def augment_for_energy(
    query: torch.Tensor, key: torch.Tensor, c: torch.Tensor | float, penalty: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the energy term into the vectors: q~ = [c q, -penalty, 0..], k~ = [k, |k|^2, 0..] (scale 1 afterwards).

    query (b, h, t, d), key (b, h, s, d); c and penalty = lambda * beta are per head (h,) or scalars.
    With `penalty=None` (lambda = 0) only the scale is folded in: q~ = c q, k~ = k.
    """
    if isinstance(c, torch.Tensor):
        c = c.to(query.dtype).view(1, -1, 1, 1)
    if penalty is None:
        return query * c, key
    head_dim = query.shape[-1]
    pad = -(head_dim + 1) % 8
    penalty_column = (-penalty).to(query.dtype).view(1, -1, 1, 1).expand(*query.shape[:-1], 1)
    query_aug = F.pad(torch.cat([query * c, penalty_column], dim=-1), (0, pad))  # (b, h, t, d + 1 + pad)
    # One padded copy of the keys with |k|^2 written into it: at decoding the keys are the whole cache, so every
    # extra full-size copy shows in the per-token time.
    key_aug = F.pad(key, (0, 1 + pad))  # (b, h, s, d + 1 + pad)
    key_aug[..., head_dim] = torch.einsum("...d,...d->...", key, key)  # |k|^2, faster than square().sum() on CPU
    return query_aug, key_aug


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs) -> torch.Tensor:
    """SDPA with the value zero-padded to the query width: the fused (flash) kernels need equal head dims and
    otherwise fall back to the O(t s)-memory math kernel (slower even for one decoding query: it rescales a transposed
    copy of every key)."""
    pad = query.shape[-1] - value.shape[-1]
    if pad <= 0:
        return F.scaled_dot_product_attention(query, key, value, **kwargs)
    return F.scaled_dot_product_attention(query, key, F.pad(value, (0, pad)), **kwargs)[..., :-pad]


def energy_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    c: torch.Tensor | float,
    penalty: torch.Tensor | None,
    mask: torch.Tensor | None = None,
    entropy_base_length: int | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Causal energy attention through SDPA. query (b, h, t, d), key (b, h, s, d), value (b, h, s, e) -> (b, h, t, e).

    `mask` comes from `build_attention_mask` (None: plain causal). `entropy_base_length` switches on the
    entropy-invariant row scale.
    """
    query_length, key_length = query.shape[-2], key.shape[-2]
    query_aug, key_aug = augment_for_energy(query, key, c, penalty)
    if entropy_base_length is not None:
        counts = visible_key_counts(mask, query_length, key_length, query.device)
        query_aug = query_aug * entropy_invariant_scale(counts, entropy_base_length).to(query.dtype)
    return _sdpa(
        query_aug,
        key_aug,
        value,
        attn_mask=mask,
        dropout_p=dropout_p,
        is_causal=mask is None and query_length > 1,
        scale=1.0,
    )


def windowed_energy_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    c: torch.Tensor | float,
    penalty: torch.Tensor | None,
    window: int,
    key_padding_mask: torch.Tensor | None = None,
    entropy_base_length: int | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Sliding-window causal energy attention in O(t * window) time and memory (no past keys: t == s).

    Queries are cut into blocks of `window`; block j attends to key blocks j-1 and j (2 * window keys), which hold
    every key within the window. query, key (b, h, t, d), value (b, h, t, e), key_padding_mask (b, t) -> (b, h, t, e).
    """
    batch, heads, length, _ = query.shape
    num_blocks = -(-length // window)
    tail = num_blocks * window - length
    query_aug, key_aug = augment_for_energy(query, key, c, penalty)
    width = query_aug.shape[-1]

    # 1. blocks: queries (b, h, n, w, D'); keys/values with one leading block of zeros, unfolded to (b, h, n, 2w, .)
    query_blocks = F.pad(query_aug, (0, 0, 0, tail)).view(batch, heads, num_blocks, window, width)
    key_blocks = F.pad(key_aug, (0, 0, window, tail)).unfold(2, 2 * window, window).transpose(-1, -2)
    value_blocks = F.pad(value, (0, 0, window, tail)).unfold(2, 2 * window, window).transpose(-1, -2)

    # 2. mask per block: query at j*w + i sees key at (j-1)*w + k iff 0 <= q - k < window and the key is real
    query_positions = torch.arange(num_blocks * window, device=query.device).view(num_blocks, window, 1)
    key_positions = (
        torch.arange(num_blocks, device=query.device).view(num_blocks, 1, 1) * window
        - window
        + torch.arange(2 * window, device=query.device).view(1, 1, 2 * window)
    )
    relative = query_positions - key_positions  # (n, w, 2w)
    mask = (relative >= 0) & (relative < window) & (key_positions >= 0) & (key_positions < length)
    mask = mask[None, None]  # (1, 1, n, w, 2w)
    if key_padding_mask is not None:
        real_keys = F.pad(key_padding_mask.to(torch.bool), (window, tail), value=False).unfold(1, 2 * window, window)
        mask = mask & real_keys[:, None, :, None, :]  # (b, 1, n, w, 2w)
    mask = mask | (~mask.any(dim=-1, keepdim=True) & (relative == 0))

    if entropy_base_length is not None:
        counts = mask.sum(dim=-1, keepdim=True).float()
        query_blocks = query_blocks * entropy_invariant_scale(counts, entropy_base_length).to(query.dtype)
    out = _sdpa(query_blocks, key_blocks, value_blocks, attn_mask=mask, dropout_p=dropout_p, scale=1.0)  # (b,h,n,w,e)
    return out.reshape(batch, heads, num_blocks * window, -1)[:, :, :length]


def energy_attention_ref(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lam: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    gamma: torch.Tensor,
    mask: torch.Tensor | None,
    entropy_base_length: int | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The literal formula softmax(QK^T/sqrt(d) - lambda H(Q, K)) V with the full T x T score matrix.

    Reference for `energy_attention` and the eager path for `output_attentions=True`. Coefficients are per head (h,).
    mask: boolean (b or 1, 1, t, s) or None for no masking at all. Returns (output (b, h, t, e), weights (b, h, t, s)).
    """
    head_dim = query.shape[-1]

    def per_head(x: torch.Tensor) -> torch.Tensor:
        return x.to(query.dtype).view(1, -1, 1, 1)

    dots = query @ key.transpose(-1, -2)  # (b, h, t, s)
    energy = (
        per_head(alpha) * query.square().sum(-1, keepdim=True)
        + per_head(beta) * key.square().sum(-1)[:, :, None, :]
        + per_head(gamma) * dots
    )
    scores = dots / math.sqrt(head_dim) - per_head(lam) * energy
    if entropy_base_length is not None:
        counts = visible_key_counts(mask, query.shape[-2], key.shape[-2], query.device)
        scores = scores * entropy_invariant_scale(counts, entropy_base_length).to(query.dtype)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return F.dropout(weights, p=dropout_p) @ value, weights


# ----------------------------------------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------------------------------------
class EnergyAttention(nn.Module):
    """Multi-head energy-penalised attention with rotary positions, padding masks, a sliding window and a KV cache.

    With `energy_lambda=0` (and fixed coefficients) it is ordinary causal attention; the H3 hybrid layers use it so.
    The module holds no state between calls: past keys/values come in as arguments and the new ones go out.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        energy_lambda: float = 0.1,
        energy_alpha: float = 1.0,
        energy_beta: float = 1.0,
        energy_gamma: float = 0.5,
        learnable_energy: bool = False,
        attention_scale: str = "standard",
        attention_scale_length: int = 512,
        attention_window: int | None = None,
        attention_dropout: float = 0.0,
        bias: bool = False,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.attention_window = attention_window
        self.attention_dropout = attention_dropout
        self.entropy_base_length = attention_scale_length if attention_scale == "entropy_invariant" else None
        self.learnable_energy = learnable_energy
        self.uses_energy = learnable_energy or energy_lambda != 0.0
        self.init_values = (energy_lambda, energy_alpha, energy_beta, energy_gamma)

        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=bias)

        def per_head() -> torch.Tensor:
            return torch.empty(num_heads)

        # alpha never reaches the output, so it is never learned (a parameter without gradient would also trip DDP)
        self.register_buffer("energy_alpha", per_head(), persistent=False)
        if learnable_energy:
            self.energy_lambda_raw = nn.Parameter(per_head())  # lambda = softplus(raw)
            self.energy_beta = nn.Parameter(per_head())
            self.energy_rho = nn.Parameter(per_head())  # c = (2 / sqrt(d)) sigmoid(rho)
        else:
            for name in ("energy_lambda", "energy_beta", "energy_gamma"):
                self.register_buffer(name, per_head(), persistent=False)
        self.reset_energy_parameters()

    @torch.no_grad()
    def reset_energy_parameters(self) -> None:
        """Set the coefficients from the constructor values; learnable ones that were loaded are left alone."""
        lam, alpha, beta, gamma = self.init_values
        self.energy_alpha.fill_(alpha)
        if self.learnable_energy:
            c = 1.0 / math.sqrt(self.head_dim) - lam * gamma
            init.constant_(self.energy_lambda_raw, lam + math.log(-math.expm1(-lam)))  # inverse softplus
            init.constant_(self.energy_beta, beta)
            init.constant_(self.energy_rho, math.log(c / (2.0 / math.sqrt(self.head_dim) - c)))  # logit(c sqrt(d) / 2)
        else:
            self.energy_lambda.fill_(lam)
            self.energy_beta.fill_(beta)
            self.energy_gamma.fill_(gamma)

    def coefficients(self) -> dict[str, torch.Tensor]:
        """Per-head lambda, alpha, beta, gamma and the derived c and penalty = lambda * beta, each (h,)."""
        inv_sqrt_d = 1.0 / math.sqrt(self.head_dim)
        if self.learnable_energy:
            lam = F.softplus(self.energy_lambda_raw)
            c = 2.0 * inv_sqrt_d * torch.sigmoid(self.energy_rho)
            gamma = (inv_sqrt_d - c) / lam
        else:
            lam, gamma = self.energy_lambda, self.energy_gamma
            c = inv_sqrt_d - lam * gamma
        return {"lam": lam, "alpha": self.energy_alpha, "beta": self.energy_beta, "gamma": gamma, "c": c,
                "penalty": lam * self.energy_beta}

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_padding_mask: torch.Tensor | None = None,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
        output_energy: bool = False,
        update_cache: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """hidden_states (b, t, D) -> (output (b, t, D), new (key, value) each (b, h, t, d), weights, mean energy).

        key_padding_mask (b, s) covers the past and the new tokens (s = past + t). The returned key/value hold only the
        new tokens (rotated keys), for the caller to put in its cache. `weights` are returned with output_attentions
        (eager literal path), the mean energy E_softmax[H] with output_energy.
        Instead of `past_key_value`, a caller with a transformers Cache may pass `update_cache(new_key, new_value) ->
        (all keys, all values)`: the cache stores the new tokens and hands back the whole history, which saves
        concatenating a copy of it here (at decoding, a full copy of the cache per token).
        """
        if past_key_value is not None and update_cache is not None:
            raise ValueError("pass past_key_value or update_cache, not both")
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)  # (b, h, t, d)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        new_key_value = (key, value)
        if update_cache is not None:
            key, value = update_cache(key, value)  # (b, h, s, d)
        elif past_key_value is not None:
            key = torch.cat([past_key_value[0], key], dim=-2)  # (b, h, s, d)
            value = torch.cat([past_key_value[1], value], dim=-2)

        coefficients = self.coefficients()
        c = coefficients["c"] if self.uses_energy else 1.0 / math.sqrt(self.head_dim)
        penalty = coefficients["penalty"] if self.uses_energy else None
        dropout_p = self.attention_dropout if self.training else 0.0
        window = self.attention_window
        has_past = key.shape[-2] > length
        use_blocks = window is not None and not has_past and length > 2 * window and not output_attentions
        mask = None if use_blocks else build_attention_mask(length, key.shape[-2], key_padding_mask, window, key.device)

        def attend(values: torch.Tensor, p: float) -> torch.Tensor:
            if use_blocks:
                return windowed_energy_attention(
                    query, key, values, c, penalty, window, key_padding_mask, self.entropy_base_length, p
                )
            return energy_attention(query, key, values, c, penalty, mask, self.entropy_base_length, p)

        weights = None
        if output_attentions:
            if mask is None:  # the literal path needs the causal mask spelled out
                mask = build_attention_mask(length, key.shape[-2], torch.ones_like(key[:, 0, :, 0]), window)
            out, weights = energy_attention_ref(
                query, key, value, coefficients["lam"], coefficients["alpha"], coefficients["beta"],
                coefficients["gamma"], mask, self.entropy_base_length, dropout_p,
            )
        else:
            out = attend(value, dropout_p)

        energy = None
        if output_energy:
            energy = self.mean_energy(query, key, coefficients, attend, key_padding_mask, length)
        out = out.transpose(1, 2).reshape(batch, length, -1)  # (b, t, D)
        return self.o_proj(out), new_key_value, weights, energy

    def mean_energy(self, query, key, coefficients, attend, key_padding_mask, length) -> torch.Tensor:
        """Mean over real queries and heads of E_{j ~ softmax_i}[H(q_i, k_j)], from one extra attention pass whose
        values are [k_j, |k_j|^2]: E[H] = alpha |q|^2 + beta E[|k|^2] + gamma <q, E[k]>."""
        moments = attend(torch.cat([key, key.square().sum(-1, keepdim=True)], dim=-1), 0.0)  # (b, h, t, d + 1)

        def per_head(x: torch.Tensor) -> torch.Tensor:
            return x.to(query.dtype).view(1, -1, 1)

        energy = (
            per_head(coefficients["alpha"]) * query.square().sum(-1)
            + per_head(coefficients["beta"]) * moments[..., -1]
            + per_head(coefficients["gamma"]) * (query * moments[..., :-1]).sum(-1)
        )  # (b, h, t)
        if key_padding_mask is None:
            return energy.mean()
        real_queries = key_padding_mask[:, None, -length:].to(energy.dtype)  # (b, 1, t)
        return (energy * real_queries).sum() / (real_queries.sum() * energy.shape[1]).clamp(min=1)

