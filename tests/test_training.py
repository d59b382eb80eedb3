"""hamiltonian_transformer.training: evaluation of a causal LM over packed blocks, and the parameters that
DistributedDataParallel must be told get no gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hamiltonian_transformer.config_from_flags import build_config
from hamiltonian_transformer.training import evaluate_causal_lm, parameters_without_gradient
from tests.script_helpers import in_process_run  # noqa: F401  (a fixture)


@pytest.mark.usefixtures("in_process_run")
def test_evaluation_is_the_mean_over_blocks_with_an_uneven_last_batch():
    accelerator = Accelerator(cpu=True)
    config = build_config("hamiltonian_transformer", "tiny")
    model = AutoModelForCausalLM.from_config(config).eval()
    blocks = torch.randint(0, config.vocab_size, (7, 16))
    with torch.no_grad():
        expected = torch.stack([model(input_ids=b[None], labels=b[None]).loss for b in blocks]).mean().item()
    loader = DataLoader([{"input_ids": b} for b in blocks], batch_size=3)
    model, loader = accelerator.prepare(model, loader)
    assert evaluate_causal_lm(model, loader, accelerator) == pytest.approx(expected, rel=1e-5)


# Every dynamics and integrator (reversible where it can be), one step per layer or two: only the first design's
# dynamics with one literal Euler step leaves parameters without a gradient (the last layer's force, see the helper).
HAMILTONIAN_VARIANTS = [
    {"dynamics": dynamics, "integrator": integrator, "evolution_steps": steps, "reversible": reversible}
    for dynamics in ("separable", "mlp_velocity") for integrator in ("euler", "symplectic_euler", "leapfrog")
    for reversible in ((False,) if integrator == "euler" else (False, True)) for steps in (1, 2)
]
VARIANTS = [("hamiltonian_transformer", overrides) for overrides in HAMILTONIAN_VARIANTS] + [
    ("h3", {}), ("h3", {"attn_layer_idx": [], "head_dim": 2})]


def _last_force(model: torch.nn.Module, config) -> list[str]:
    last = f"layers.{config.num_hidden_layers - 1}."
    return [name for name, _ in model.named_parameters()
            if f"{last}force_norm." in name or f"{last}attention." in name]


@pytest.mark.parametrize("head", [AutoModelForCausalLM, AutoModelForSequenceClassification],
                         ids=["causal_lm", "classification"])
@pytest.mark.parametrize(("model_type", "overrides"), VARIANTS,
                         ids=[f"{t}-" + "-".join(f"{v}" for v in o.values()) for t, o in VARIANTS])
def test_the_parameters_without_gradient_are_those_a_training_step_leaves_without_one(head, model_type, overrides):
    config = build_config(model_type, "tiny", {**overrides, "hidden_dropout": 0.1}, num_labels=3, pad_token_id=0)
    torch.manual_seed(0)
    model = head.from_config(config).eval()
    rng = torch.get_rng_state()
    unused = parameters_without_gradient(model)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew its masks: the run's stay where they were
    assert not model.training and all(param.grad is None for param in model.parameters())

    model.train()  # what DistributedDataParallel meets: a step on a real loss
    inputs = torch.randint(1, config.vocab_size, (2, 6))
    labels = inputs if head is AutoModelForCausalLM else torch.tensor([0, 2])
    model(input_ids=inputs, labels=labels).loss.backward()
    assert unused == [name for name, param in model.named_parameters() if param.grad is None]
    literal_euler_first_design = overrides.get("dynamics") == "mlp_velocity" and overrides.get(
        "integrator") == "euler" and overrides.get("evolution_steps") == 1
    assert unused == (_last_force(model, config) if literal_euler_first_design else [])


def test_ddp_told_of_the_parameters_without_gradient_trains_where_it_fails_untold():
    config = build_config("hamiltonian_transformer", "tiny", {"dynamics": "mlp_velocity", "integrator": "euler"})
    model = AutoModelForCausalLM.from_config(config)
    told = bool(parameters_without_gradient(model))
    assert told
    inputs = torch.randint(0, config.vocab_size, (2, 8))
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        for find_unused_parameters in (told, False):
            ddp = DistributedDataParallel(copy.deepcopy(model), find_unused_parameters=find_unused_parameters)
            ddp(input_ids=inputs, labels=inputs).loss.backward()
            if find_unused_parameters:
                ddp(input_ids=inputs, labels=inputs).loss.backward()
            else:
                with pytest.raises(RuntimeError, match="finished reduction in the prior iteration"):
                    ddp(input_ids=inputs, labels=inputs).loss.backward()
            del ddp  # before the group goes (tests/test_scripts_pretrain.py: the other order can deadlock)
    finally:
        torch.distributed.destroy_process_group()
