"""Energy-penalised ("Hamiltonian") attention.

    scores_ij = <q_i, k_j> / sqrt(d) - lambda * H(q_i, k_j),   H(q, k) = alpha |q|^2 + beta |k|^2 + gamma <q, k>
    out_i     = sum_j softmax_j(scores_ij) v_j

Softmax ignores a per-row constant, so the `alpha |q_i|^2` term cancels and

    scores_ij = c <q_i, k_j> - lambda beta |k_j|^2,   c = 1/sqrt(d) - lambda gamma,

which is plain scaled-dot-product attention (scale 1) on the augmented vectors
`q~ = [c q, -lambda beta]` and `k~ = [k, |k|^2]` (values zero-padded to the same width for the fused kernels).
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

CacheUpdate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(new keys, new values) (b, h, t, w) -> (all keys, all values) (b, h, s, w): a transformers `Cache.update` bound to
one attention (its layer index)."""


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


def cache_width(head_dim: int, uses_energy: bool) -> int:
    """Head width of the keys and values as the attention stores them: d, or d + 1 (the |k|^2 column) when the energy
    term is on. Not rounded up to a multiple of 8: a decode step copies and reads the whole cache, so every extra
    column costs time at every token; the fused CPU kernel takes width d + 1 as it is."""
    return head_dim + 1 if uses_energy else head_dim


def kernel_width(head_dim: int, uses_energy: bool) -> int:
    """Head width of the augmented vectors when no cache is kept (training, scoring): d + 1 rounded up to a multiple
    of 8 when the energy term is on. The fused CPU kernel's backward is slow at odd widths (forward + backward at
    T = 2048, 8 heads: 236 ms at 65 columns, 177 ms at 72, 163 ms at 64), and GPU kernels want multiples of 8."""
    return -(-(head_dim + 1) // 8) * 8 if uses_energy else head_dim


def augment_keys(key: torch.Tensor, width: int) -> torch.Tensor:
    """k~ = [k, |k|^2, 0..] of `width` columns (or k itself when width == d). key (b, h, s, d) -> (b, h, s, width).

    Keys are cached in this form, so decoding augments only the new token's key, never the whole history."""
    head_dim = key.shape[-1]
    if width == head_dim:
        return key
    # One cat (forward and backward): 1.4 ms forward + backward at (1, 8, 2048, 64) against 5.7 ms for a pad, an
    # einsum and a column write, and 10 us against 31 us for one decoding token (2-core CPU).
    padding = key.new_zeros(*key.shape[:-1], width - head_dim - 1)
    return torch.cat([key, key.square().sum(-1, keepdim=True), padding], dim=-1)


def pad_values(value: torch.Tensor, width: int) -> torch.Tensor:
    """value (b, h, s, e) zero-padded to `width` columns: the fused (flash) SDPA kernels need equal head dims and
    otherwise fall back to the O(t s)-memory math kernel (slower even for one decoding query)."""
    return value if value.shape[-1] == width else F.pad(value, (0, width - value.shape[-1]))


def augment_queries(query: torch.Tensor, c: torch.Tensor | float, penalty: torch.Tensor | None, width: int):
    """q~ = [c q, -penalty, 0..] of `width` columns, so that <q~, k~> = c <q, k> - penalty |k|^2 (scale 1 afterwards).

    query (b, h, t, d); c and penalty = lambda * beta are per head (h,) or scalars. With `penalty=None` (lambda = 0)
    only the scale is folded in: q~ = c q."""
    if isinstance(c, torch.Tensor):
        c = c.to(query.dtype).view(1, -1, 1, 1)
    if penalty is None:
        return query * c
    penalty_column = (-penalty).to(query.dtype).view(1, -1, 1, 1).expand(*query.shape[:-1], 1)
    padding = query.new_zeros(*query.shape[:-1], width - query.shape[-1] - 1)
    return torch.cat([query * c, penalty_column, padding], dim=-1)  # (b, h, t, width)


def energy_attention(
    query_aug: torch.Tensor,
    key_aug: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    entropy_base_length: int | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Causal energy attention through SDPA on augmented vectors (`augment_queries`, `augment_keys`, `pad_values`).

    query_aug (b, h, t, w), key_aug (b, h, s, w), value (b, h, s, w) -> (b, h, t, w). `mask` comes from
    `build_attention_mask` (None: plain causal). `entropy_base_length` switches on the entropy-invariant row scale.
    """
    query_length, key_length = query_aug.shape[-2], key_aug.shape[-2]
    if entropy_base_length is not None:
        counts = visible_key_counts(mask, query_length, key_length, query_aug.device)
        query_aug = query_aug * entropy_invariant_scale(counts, entropy_base_length).to(query_aug.dtype)
    return F.scaled_dot_product_attention(
        query_aug,
        key_aug,
        value,
        attn_mask=mask,
        dropout_p=dropout_p,
        is_causal=mask is None and query_length > 1,
        scale=1.0,
    )


def windowed_energy_attention(
    query_aug: torch.Tensor,
    key_aug: torch.Tensor,
    value: torch.Tensor,
    window: int,
    key_padding_mask: torch.Tensor | None = None,
    entropy_base_length: int | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Sliding-window causal energy attention in O(t * window) time and memory (no past keys: t == s).

    Queries are cut into blocks of `window`; block j attends to key blocks j-1 and j (2 * window keys), which hold
    every key within the window. Augmented query_aug, key_aug, value (b, h, t, w), key_padding_mask (b, t)
    -> (b, h, t, w).
    """
    batch, heads, length, width = query_aug.shape
    num_blocks = -(-length // window)
    tail = num_blocks * window - length

    # 1. blocks: queries (b, h, n, w, D'); keys/values with one leading block of zeros, unfolded to (b, h, n, 2w, .)
    query_blocks = F.pad(query_aug, (0, 0, 0, tail)).view(batch, heads, num_blocks, window, width)
    key_blocks = F.pad(key_aug, (0, 0, window, tail)).unfold(2, 2 * window, window).transpose(-1, -2)
    value_blocks = F.pad(value, (0, 0, window, tail)).unfold(2, 2 * window, window).transpose(-1, -2)

    # 2. mask per block: query at j*w + i sees key at (j-1)*w + k iff 0 <= q - k < window and the key is real
    query_positions = torch.arange(num_blocks * window, device=query_aug.device).view(num_blocks, window, 1)
    key_positions = (
        torch.arange(num_blocks, device=query_aug.device).view(num_blocks, 1, 1) * window
        - window
        + torch.arange(2 * window, device=query_aug.device).view(1, 1, 2 * window)
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
        query_blocks = query_blocks * entropy_invariant_scale(counts, entropy_base_length).to(query_aug.dtype)
    out = F.scaled_dot_product_attention(
        query_blocks, key_blocks, value_blocks, attn_mask=mask, dropout_p=dropout_p, scale=1.0
    )  # (b, h, n, w, e)
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
    The module holds no state between calls: a caller with a cache passes `cache_update` (its `Cache.update` for this
    attention), which stores the new keys and values and returns the history. The cache holds the keys augmented with
    their |k|^2 column and the values zero-padded to the same width (`cache_width`: head_dim + 1 with the energy term
    on, head_dim without it), so decoding augments and pads only the new token. Without a cache the vectors are padded
    to `kernel_width` instead (a multiple of 8), where the fused kernels run faster.
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
        self.cache_width = cache_width(self.head_dim, self.uses_energy)
        self.kernel_width = kernel_width(self.head_dim, self.uses_energy)
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
        attention_mask: torch.Tensor | None = None,
        cache_update: CacheUpdate | None = None,
        attn_implementation: str = "sdpa",
        output_attentions: bool = False,
        output_energy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """hidden_states (b, t, D) -> (output (b, t, D), attention weights or None, mean energy or None).

        attention_mask (b, s): True/1 for real tokens, covering the cached and the new tokens (None: all real).
        cache_update(new_keys, new_values) -> (all keys, all values): stores this call's keys and values, in the cached
        form of `augment_keys` / `pad_values` (b, h, t, w), and returns the history they belong to (b, h, s, w) (a
        transformers `Cache.update` bound to a layer). None: attend to this call's tokens only.
        attn_implementation: "eager" runs the literal T x T formula (`energy_attention_ref`), "sdpa" the reduction
        through `scaled_dot_product_attention`; `output_attentions=True` always takes the literal path, which has the
        weights. `output_energy=True` also returns the mean energy E_softmax[H] over real queries and heads.
        """
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)  # (b, h, t, d)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)

        # 1. augmented keys and values, in their cached form when there is a cache, which hands back the whole history
        width = self.kernel_width if cache_update is None else self.cache_width
        key, value = augment_keys(key, width), pad_values(value, width)  # (b, h, t, w)
        if cache_update is not None:
            key, value = cache_update(key, value)  # (b, h, s, w)
        key_length = key.shape[-2]
        key_padding_mask = None if attention_mask is None else attention_mask[:, -key_length:].bool()

        # 2. attention: the literal formula (eager) or SDPA on the augmented vectors, blocked for long windowed inputs
        coefficients = self.coefficients()
        dropout_p = self.attention_dropout if self.training else 0.0
        window = self.attention_window
        eager = output_attentions or attn_implementation == "eager"
        use_blocks = not eager and window is not None and key_length == length and length > 2 * window
        mask = None if use_blocks else build_attention_mask(length, key_length, key_padding_mask, window, key.device)
        if eager and mask is None:  # the literal path needs the causal mask spelled out
            real = torch.ones(batch, key_length, dtype=torch.bool, device=key.device)
            mask = build_attention_mask(length, key_length, real, window, key.device)
        weights = None
        if eager:
            out, weights = energy_attention_ref(
                query, key[..., : self.head_dim], value[..., : self.head_dim], coefficients["lam"],
                coefficients["alpha"], coefficients["beta"], coefficients["gamma"], mask, self.entropy_base_length,
                dropout_p,
            )

            def attend(values: torch.Tensor) -> torch.Tensor:
                return weights @ values
        else:
            c = coefficients["c"] if self.uses_energy else 1.0 / math.sqrt(self.head_dim)
            penalty = coefficients["penalty"] if self.uses_energy else None
            query_aug = augment_queries(query, c, penalty, width)

            def attend(values: torch.Tensor, p: float = 0.0) -> torch.Tensor:
                if use_blocks:
                    return windowed_energy_attention(
                        query_aug, key, values, window, key_padding_mask, self.entropy_base_length, p
                    )
                return energy_attention(query_aug, key, values, mask, self.entropy_base_length, p)

            out = attend(value, dropout_p)[..., : self.head_dim]

        energy = None
        if output_energy:
            energy = self.mean_energy(query, key, coefficients, attend, key_padding_mask, length)
        out = out.transpose(1, 2).reshape(batch, length, -1)  # (b, t, D)
        return self.o_proj(out), weights, energy

    def mean_energy(self, query, key, coefficients, attend, key_padding_mask, length) -> torch.Tensor:
        """Mean over real queries and heads of E_{j ~ softmax_i}[H(q_i, k_j)], from one extra attention pass whose
        values are [k_j, |k_j|^2] (the cached keys themselves when the energy term is on):
        E[H] = alpha |q|^2 + beta E[|k|^2] + gamma <q, E[k]>."""
        d = self.head_dim
        if not self.uses_energy:
            key = torch.cat([key, key.square().sum(-1, keepdim=True)], dim=-1)
        moments = attend(key)  # (b, h, t, >= d + 1)

        def per_head(x: torch.Tensor) -> torch.Tensor:
            return x.to(query.dtype).view(1, -1, 1)

        energy = (
            per_head(coefficients["alpha"]) * query.square().sum(-1)
            + per_head(coefficients["beta"]) * moments[..., d]
            + per_head(coefficients["gamma"]) * (query * moments[..., :d]).sum(-1)
        )  # (b, h, t)
        if key_padding_mask is None:
            return energy.mean()
        real_queries = key_padding_mask[:, None, -length:].to(energy.dtype)  # (b, 1, t)
        return (energy * real_queries).sum() / (real_queries.sum() * energy.shape[1]).clamp(min=1)
