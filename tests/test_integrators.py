"""Integrator steps: exact inverses, unit Jacobian determinant, and reversible backprop equal to stored activations."""

import subprocess

import pytest
import torch

from hamiltonian_transformer import HamiltonianTransformerConfig, HamiltonianTransformerForCausalLM
from hamiltonian_transformer.configuration_hamiltonian import DYNAMICS
from hamiltonian_transformer.layers import RotaryEmbedding
from hamiltonian_transformer.modeling_hamiltonian import HamiltonianLayer

from .conftest import PYTHON, REPO_ROOT, subprocess_env


def small_layer(integrator: str, steps: int = 1, dynamics: str = "separable") -> tuple[HamiltonianLayer, dict]:
    config = HamiltonianTransformerConfig.from_preset(
        "tiny", hidden_size=8, num_attention_heads=2, intermediate_size=16, integrator=integrator,
        evolution_steps=steps, step_size=0.7, dynamics=dynamics,
    )
    layer = HamiltonianLayer(config, 0).double().eval()
    for parameter in layer.parameters():  # move away from the init so the maps are far from the identity
        torch.nn.init.normal_(parameter, std=0.5)
    rotary = RotaryEmbedding(config.head_dim)
    return layer, dict(position_embeddings=rotary(torch.arange(3)[None], torch.float64))


@pytest.mark.parametrize("dynamics", DYNAMICS)
@pytest.mark.parametrize("integrator,steps", [("symplectic_euler", 1), ("symplectic_euler", 3), ("leapfrog", 2)])
def test_inverse_reconstructs_layer_input(integrator, steps, dynamics):
    layer, inputs = small_layer(integrator, steps, dynamics)
    q, p = torch.randn(2, 1, 3, 8, dtype=torch.float64).unbind(0)
    q_out, p_out, _, _ = layer(q, p, **inputs)
    q_back, p_back, _, _ = layer(q_out, p_out, **inputs, inverse=True)
    torch.testing.assert_close(q_back, q, atol=1e-12, rtol=0)
    torch.testing.assert_close(p_back, p, atol=1e-12, rtol=0)


def log_abs_det_jacobian(integrator: str, dynamics: str = "separable") -> float:
    layer, inputs = small_layer(integrator, 2, dynamics)
    state = torch.randn(2 * 3 * 8, dtype=torch.float64)

    def layer_map(flat: torch.Tensor) -> torch.Tensor:
        q, p = flat.view(2, 1, 3, 8).unbind(0)
        return torch.cat([t.reshape(-1) for t in layer(q, p, **inputs)[:2]])

    jacobian = torch.autograd.functional.jacobian(layer_map, state)
    return torch.linalg.slogdet(jacobian).logabsdet.item()


@pytest.mark.parametrize("dynamics", DYNAMICS)
@pytest.mark.parametrize("integrator", ["symplectic_euler", "leapfrog"])
def test_symplectic_layer_preserves_volume(integrator, dynamics):
    assert abs(log_abs_det_jacobian(integrator, dynamics)) < 1e-6


@pytest.mark.parametrize("dynamics", DYNAMICS)
def test_literal_euler_does_not_preserve_volume(dynamics):
    # the volume test above can fail: the non-symplectic update changes volume
    assert abs(log_abs_det_jacobian("euler", dynamics)) > 1e-3


def test_separable_symplectic_euler_layer_is_the_written_out_splitting():
    """Kick p with the attention, drift q with p, kick p with the MLP, drift q: spelled out with the layer's modules."""
    layer, inputs = small_layer("symplectic_euler", 1, "separable")
    q, p = torch.randn(2, 1, 3, 8, dtype=torch.float64).unbind(0)
    h = layer.step_size()

    def attention(x):
        return layer.attention(layer.force_norm(x), inputs["position_embeddings"])[0]

    def mlp(x):
        return layer.mlp(layer.velocity_norm(x))

    p1 = p + h * attention(q)
    q1 = q + h * p1
    p2 = p1 + h * mlp(q1)
    q2 = q1 + h * p2
    q_out, p_out, _, _ = layer(q, p, **inputs)
    torch.testing.assert_close(q_out, q2, atol=1e-12, rtol=0)
    torch.testing.assert_close(p_out, p2, atol=1e-12, rtol=0)


INTEGRATOR_RUNS = [(integrator, dynamics, reversible) for dynamics in DYNAMICS
                   for integrator in ("euler", "symplectic_euler", "leapfrog")
                   for reversible in ((False, True) if integrator != "euler" else (False,))]


@pytest.mark.parametrize("integrator,dynamics,reversible", INTEGRATOR_RUNS)
def test_every_parameter_gets_a_gradient_in_a_training_step(integrator, dynamics, reversible):
    """No sublayer may feed a stream the head never reads (e.g. the last MLP writing a q nobody uses)."""
    config = HamiltonianTransformerConfig.from_preset(
        "tiny", integrator=integrator, dynamics=dynamics, reversible=reversible, evolution_steps=2,
        learnable_energy=True, tie_word_embeddings=False,
    )
    model = HamiltonianTransformerForCausalLM(config).train()
    ids = torch.randint(0, 99, (2, 8))
    model(ids, labels=ids).loss.backward()
    missing = [name for name, w in model.named_parameters() if w.grad is None or not bool(w.grad.abs().sum() > 0)]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("dynamics", DYNAMICS)
@pytest.mark.parametrize("integrator", ["symplectic_euler", "leapfrog"])
def test_reversible_gradients_equal_stored_activation_gradients_with_dropout(integrator, dynamics):
    config = HamiltonianTransformerConfig.from_preset(
        "tiny", integrator=integrator, dynamics=dynamics, evolution_steps=2, hidden_dropout=0.2,
        attention_dropout=0.2, initial_momentum="learned", learnable_energy=True, pad_token_id=0,
    )
    stored = HamiltonianTransformerForCausalLM(config).double().train()
    reversible = HamiltonianTransformerForCausalLM(HamiltonianTransformerConfig.from_dict(
        {**config.to_dict(), "reversible": True})).double().train()
    reversible.load_state_dict(stored.state_dict())
    ids = torch.randint(1, 99, (2, 10))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    losses = []
    for model in (stored, reversible):
        torch.manual_seed(1234)
        loss = model(ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=1e-12, rtol=0)
    for (name, a), (_, b) in zip(stored.named_parameters(), reversible.named_parameters()):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-5, msg=name)
    # dropout was really on: a second draw differs
    torch.manual_seed(99)
    assert not torch.allclose(stored(ids, attention_mask=mask, labels=ids).loss, losses[0])


@pytest.mark.parametrize("integrator", ["symplectic_euler", "leapfrog"])
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_same_gradients(integrator, use_reentrant):
    """Reentrant checkpointing passes the layer's outputs through an autograd Function, which returns them as a
    plain tuple: the model must not rely on the named one."""
    config = HamiltonianTransformerConfig.from_preset("tiny", integrator=integrator)
    plain = HamiltonianTransformerForCausalLM(config).train()
    checkpointed = HamiltonianTransformerForCausalLM(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    ids = torch.randint(0, 99, (2, 8))
    for model in (plain, checkpointed):
        model(ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_gradient_checkpointing_refused_for_reversible_model():
    model = HamiltonianTransformerForCausalLM(HamiltonianTransformerConfig.from_preset("tiny", reversible=True))
    with pytest.raises(ValueError, match="reversible"):
        model.activation_checkpointing_enable()


def activation_bytes(layers: int, reversible: bool) -> int:
    result = subprocess.run(
        [PYTHON, "tests/activation_memory.py", str(layers), str(int(reversible)), "2", "1024"],
        cwd=REPO_ROOT,
        # A fixed mmap threshold returns freed activation-sized blocks to the OS at once; with glibc's adaptive one
        # they stay resident and the peak would measure heap fragmentation rather than live tensors.
        env=subprocess_env(MALLOC_MMAP_THRESHOLD_="262144"),
        capture_output=True, text=True, timeout=300, check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


def test_reversible_activation_memory_does_not_grow_with_depth():
    reversible_ratio = activation_bytes(24, True) / activation_bytes(6, True)
    stored_ratio = activation_bytes(24, False) / activation_bytes(6, False)
    print(f"activation memory 24 vs 6 layers: reversible {reversible_ratio:.2f}x, stored {stored_ratio:.2f}x")
    assert reversible_ratio <= 1.5
    assert stored_ratio >= 2.5  # ~4x for the layers alone; embeddings, logits and loss are a fixed share
