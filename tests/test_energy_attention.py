"""The SDPA energy attention equals the literal softmax(QK^T/sqrt(d) - lambda H(Q, K)) V."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import hamiltonian_transformer
from hamiltonian_transformer.energy_attention import (
    EnergyAttention,
    augment_keys,
    augment_queries,
    build_attention_mask,
    cache_width,
    energy_attention,
    energy_attention_ref,
    pad_values,
    windowed_energy_attention,
)

B, H, D = 2, 3, 16


def coefficients(lam=0.1, alpha=0.7, beta=0.9, gamma=0.6):
    per_head = torch.linspace(0.5, 1.5, H, dtype=torch.float64)
    lam, alpha, beta, gamma = lam * per_head, alpha * per_head, beta * per_head, gamma * per_head
    return dict(lam=lam, alpha=alpha, beta=beta, gamma=gamma, c=1 / math.sqrt(D) - lam * gamma, penalty=lam * beta)


def qkv(t, s=None, e=D):
    s = t if s is None else s
    return (torch.randn(B, H, t, D, dtype=torch.float64), torch.randn(B, H, s, D, dtype=torch.float64),
            torch.randn(B, H, s, e, dtype=torch.float64))


def reference(q, k, v, co, mask, entropy=None):
    return energy_attention_ref(q, k, v, co["lam"], co["alpha"], co["beta"], co["gamma"], mask, entropy)[0]


WIDTH = cache_width(D, uses_energy=True)


def sdpa(q, k, v, co, mask=None, entropy=None):
    """The SDPA path on the augmented vectors, cut back to the value width."""
    out = energy_attention(augment_queries(q, co["c"], co["penalty"], WIDTH), augment_keys(k, WIDTH),
                           pad_values(v, WIDTH), mask, entropy)
    return out[..., : v.shape[-1]]


def test_reduction_folds_energy_into_one_extra_column():
    q, k, _ = qkv(5)
    co = coefficients()
    q_aug, k_aug = augment_queries(q, co["c"], co["penalty"], WIDTH), augment_keys(k, WIDTH)
    assert q_aug.shape[-1] == k_aug.shape[-1] == WIDTH == D + 1
    assert cache_width(D, uses_energy=False) == D
    logits = q_aug @ k_aug.transpose(-1, -2)
    literal = (q @ k.transpose(-1, -2)) / math.sqrt(D) - co["lam"].view(1, H, 1, 1) * (
        co["alpha"].view(1, H, 1, 1) * q.square().sum(-1, keepdim=True)
        + co["beta"].view(1, H, 1, 1) * k.square().sum(-1)[:, :, None]
        + co["gamma"].view(1, H, 1, 1) * (q @ k.transpose(-1, -2))
    )
    # equal up to the per-row constant lambda*alpha*|q_i|^2, which softmax ignores
    difference = logits - literal
    torch.testing.assert_close(difference, difference[..., :1].expand_as(difference), atol=1e-12, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("entropy", [None, 4])
def test_sdpa_path_equals_literal_formula(causal, entropy):
    q, k, v = qkv(9)
    co = coefficients()
    mask = build_attention_mask(9, 9) if causal else torch.ones(1, 1, 9, 9, dtype=torch.bool)
    literal_mask = build_attention_mask(9, 9, torch.ones(1, 9)) if causal else mask
    out = sdpa(q, k, v, co, mask, entropy)
    torch.testing.assert_close(out, reference(q, k, v, co, literal_mask, entropy), atol=1e-5, rtol=1e-5)


def test_sdpa_path_equals_literal_with_padding_and_kv_cache():
    past, t = 6, 3
    q, k, v = qkv(t, past + t)
    co = coefficients()
    padding = torch.ones(B, past + t, dtype=torch.bool)
    padding[0, :2] = False  # left padding in row 0
    mask = build_attention_mask(t, past + t, padding)
    out = sdpa(q, k, v, co, mask, 8)
    torch.testing.assert_close(out, reference(q, k, v, co, mask, 8), atol=1e-5, rtol=1e-5)
    # the padded keys carry no weight: changing them changes nothing for real queries
    k2, v2 = k.clone(), v.clone()
    k2[0, :, :2] += 10.0
    v2[0, :, :2] -= 10.0
    torch.testing.assert_close(sdpa(q, k2, v2, co, mask), sdpa(q, k, v, co, mask))


def test_padding_queries_stay_finite():
    padding = torch.tensor([[False, False, True, True]])
    mask = build_attention_mask(4, 4, padding)
    q, k, v = qkv(4)
    co = coefficients()
    assert torch.isfinite(sdpa(q, k, v, co, mask)).all()


@pytest.mark.parametrize("length,window", [(13, 4), (16, 4), (9, 3)])
def test_blocked_sliding_window_equals_masked_full_attention(length, window):
    q, k, v = qkv(length)
    co = coefficients()
    padding = torch.ones(B, length, dtype=torch.bool)
    padding[1, :3] = False
    mask = build_attention_mask(length, length, padding, window)
    blocked = windowed_energy_attention(
        augment_queries(q, co["c"], co["penalty"], WIDTH), augment_keys(k, WIDTH), pad_values(v, WIDTH), window,
        padding, entropy_base_length=2,
    )[..., :D]
    torch.testing.assert_close(blocked, reference(q, k, v, co, mask, 2), atol=1e-5, rtol=1e-5)


def test_lambda_zero_is_plain_scaled_dot_product_attention():
    q, k, v = qkv(7)
    out = energy_attention(augment_queries(q, 1 / math.sqrt(D), None, D), augment_keys(k, D), v)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("learnable", [False, True])
def test_module_eager_and_sdpa_paths_agree_and_gamma_is_recovered(learnable):
    module = EnergyAttention(32, 4, energy_lambda=0.2, energy_gamma=0.8, learnable_energy=learnable).double()
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    fast = module(x)[0]
    eager, weights, _ = module(x, output_attentions=True)
    torch.testing.assert_close(fast, eager)
    torch.testing.assert_close(module(x, attn_implementation="eager")[0], eager)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 6, dtype=torch.float64))
    coefficients_ = module.coefficients()
    torch.testing.assert_close(coefficients_["gamma"], torch.full((4,), 0.8, dtype=torch.float64))
    assert (coefficients_["c"] > 0).all()


def test_mean_energy_matches_literal_expectation():
    module = EnergyAttention(16, 2, energy_lambda=0.3, energy_alpha=0.5, energy_beta=0.7, energy_gamma=0.4).double()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    _, weights, energy = module(x, output_attentions=True, output_energy=True)
    torch.testing.assert_close(module(x, output_energy=True)[2], energy)  # the SDPA path's diagnostic
    q = module.q_proj(x).view(1, 5, 2, 8).transpose(1, 2)
    k = module.k_proj(x).view(1, 5, 2, 8).transpose(1, 2)
    h = 0.5 * q.square().sum(-1, keepdim=True) + 0.7 * k.square().sum(-1)[:, :, None] + 0.4 * q @ k.transpose(-1, -2)
    torch.testing.assert_close(energy, (weights * h).sum(-1).mean())


@pytest.mark.parametrize("energy_lambda", [0.3, 0.0])
def test_cached_keys_are_augmented_once_and_decoding_equals_the_full_pass(energy_lambda):
    """The cache receives each token's key once, already augmented with |k|^2 (and values padded to its width), and
    attention over the history it hands back equals attention over the whole sequence at once."""
    torch.manual_seed(0)
    module = EnergyAttention(16, 2, energy_lambda=energy_lambda, energy_gamma=0.4).double().eval()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    full = module(x)[0]
    keys, values, stored = [], [], []

    def cache_update(key, value):
        stored.append(key.shape[-2])
        keys.append(key)
        values.append(value)
        return torch.cat(keys, dim=-2), torch.cat(values, dim=-2)

    steps = [module(x[:, :4], cache_update=cache_update)[0]]
    steps += [module(x[:, t : t + 1], cache_update=cache_update)[0] for t in range(4, 7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-12)
    assert stored == [4, 1, 1, 1]
    key = torch.cat(keys, dim=-2)
    assert key.shape[-1] == module.cache_width == (9 if energy_lambda else 8) and values[0].shape[-1] == key.shape[-1]
    if energy_lambda:
        torch.testing.assert_close(key[..., 8], key[..., :8].square().sum(-1))  # |k|^2 column, written once


@pytest.mark.parametrize(("energy_lambda", "widths"), [(0.3, (16, 9)), (0.0, (8, 8))])
def test_sdpa_runs_at_a_multiple_of_8_without_a_cache_and_at_the_cache_width_with_one(energy_lambda, widths,
                                                                                      monkeypatch):
    """Head dim 8: without a cache the augmented vectors are padded to kernel_width (16), which the fused kernels
    run faster than 9 columns; with a cache they stay at its width, head_dim + 1 (the equality of the two paths is the
    test above)."""
    module = EnergyAttention(16, 2, energy_lambda=energy_lambda, energy_gamma=0.4).eval()
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: seen.append((q.shape[-1], k.shape[-1], v.shape[-1])) or original(
                            q, k, v, **kw))
    x = torch.randn(2, 5, 16)
    module(x)
    module(x, cache_update=lambda key, value: (key, value))
    assert seen == [(widths[0],) * 3, (widths[1],) * 3]
    assert (module.kernel_width, module.cache_width) == widths


def test_eager_implementation_runs_the_literal_formula_not_sdpa(monkeypatch):
    module = EnergyAttention(16, 2, energy_lambda=0.3, energy_gamma=0.4).double()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    sdpa_out = module(x, attn_implementation="sdpa")[0]
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    eager_out = module(x, attn_implementation="eager")[0]
    assert not calls
    module(x, attn_implementation="sdpa")
    assert calls
    torch.testing.assert_close(eager_out, sdpa_out)


@pytest.mark.parametrize("model_class,config_class,overrides", [
    ("HamiltonianTransformerForCausalLM", "HamiltonianTransformerConfig", dict(integrator="leapfrog")),
    ("H3ForCausalLM", "H3Config", dict(attn_layer_idx=[1])),
])
def test_models_honour_attn_implementation(model_class, config_class, overrides, monkeypatch):
    """`attn_implementation="eager"` (transformers' own switch) runs the literal formula, "sdpa" the fused kernel; both
    give the same logits."""
    config = getattr(hamiltonian_transformer, config_class).from_preset("tiny", **overrides)
    # from_config writes the implementation into the config it is given: one copy each
    sdpa_model = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    eager_model = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    eager_model.load_state_dict(sdpa_model.state_dict())
    assert type(eager_model).__name__ == model_class and eager_model.config._attn_implementation == "eager"
    assert sdpa_model.config._attn_implementation == "sdpa"
    ids = torch.randint(1, 99, (2, 9))
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    eager_logits = eager_model(ids).logits
    assert not calls
    sdpa_logits = sdpa_model(ids).logits
    assert calls
    torch.testing.assert_close(eager_logits, sdpa_logits, atol=1e-5, rtol=1e-5)
    eager_model.set_attn_implementation("sdpa")
    calls.clear()
    eager_model(ids)
    assert calls
