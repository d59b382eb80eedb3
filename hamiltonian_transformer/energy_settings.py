"""The energy settings of the family's attention, declared once for both configs, with their checks.

`HamiltonianTransformerConfig` (every layer) and `H3Config` (its `attn_layer_idx` layers) both run `EnergyAttention`,
so both take these fields from `EnergySettings` and refuse the same values with the same messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config_checks import check_bool, check_choice, check_int, check_number
from .energy_attention import ATTENTION_SCALES

ENERGY_SETTINGS = ("energy_lambda", "energy_alpha", "energy_beta", "energy_gamma", "learnable_energy",
                   "attention_scale", "attention_scale_length")


# A dataclass, so that the configs (which transformers turns into dataclasses) inherit these as their own fields.
# repr, eq and init stay those of the config: this class only contributes fields and a check.
@dataclass(init=False, repr=False, eq=False, kw_only=True)
class EnergySettings:
    r"""
    Args:
        energy_lambda (`float`): lambda, weight of the energy H in the logits (0 gives plain attention).
        energy_alpha (`float`): alpha, weight of |q|^2 in H (cancels in the softmax; shows in the energy diagnostic).
        energy_beta (`float`): beta, weight of |k|^2 in H.
        energy_gamma (`float`): gamma, weight of <q, k> in H. Fixed coefficients need lambda*gamma < 1/sqrt(head_dim).
        learnable_energy (`bool`): Learn lambda, beta and c = 1/sqrt(d) - lambda*gamma per head (c kept in
            (0, 2/sqrt(d)) by a sigmoid, lambda > 0 by a softplus); alpha stays fixed (it cannot affect the output).
        attention_scale (`str`): "standard" or "entropy_invariant" (row logits times max(1, log n_i / log L)).
        attention_scale_length (`int`): L of the entropy-invariant scale.
    """

    energy_lambda: float = 0.1
    energy_alpha: float = 1.0
    energy_beta: float = 1.0
    energy_gamma: float = 0.5
    learnable_energy: bool = False
    attention_scale: str = "standard"
    attention_scale_length: int = 512

    def check_energy_settings(self, head_dim: int | None) -> None:
        """Refuse energy settings the attention cannot run with (ValueError naming the field and what is allowed).

        ``head_dim`` is the attention layers' head size d; None where the model has no attention layer (then only
        the fields themselves are checked, not the bound on lambda * gamma that depends on d).
        """
        for field in ("energy_alpha", "energy_beta", "energy_gamma"):
            check_number(field, getattr(self, field))
        check_number("energy_lambda", self.energy_lambda, minimum=0.0)
        check_bool("learnable_energy", self.learnable_energy)
        check_choice("attention_scale", self.attention_scale, ATTENTION_SCALES)
        check_int("attention_scale_length", self.attention_scale_length, minimum=2)
        if head_dim is None:
            return
        # c = 1/sqrt(d) - lambda*gamma multiplies <q, k>: c <= 0 would make attention prefer dissimilar keys.
        inv_sqrt_d = 1.0 / math.sqrt(head_dim)
        product = self.energy_lambda * self.energy_gamma
        if self.learnable_energy:
            if self.energy_lambda <= 0:
                raise ValueError(f"`energy_lambda`={self.energy_lambda} must be > 0 when `learnable_energy=True`.")
            if not -inv_sqrt_d < product < inv_sqrt_d:
                raise ValueError(
                    f"energy_lambda * energy_gamma = {product:g} must lie in (-{inv_sqrt_d:.4g}, {inv_sqrt_d:.4g}) "
                    f"(+-1/sqrt(head_dim), head_dim={head_dim}) for learnable energy coefficients."
                )
        elif product >= inv_sqrt_d:
            raise ValueError(
                f"energy_lambda * energy_gamma = {product:g} must be < 1/sqrt(head_dim) = {inv_sqrt_d:.4g} "
                f"(head_dim={head_dim}), so that the dot-product coefficient c = 1/sqrt(d) - lambda*gamma stays "
                "positive; lower `energy_gamma` or `energy_lambda`."
            )
