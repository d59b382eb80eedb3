"""The Hamiltonian Transformer as a Hugging Face model: Auto classes, save/load, remote code, generate, Trainer."""

import json
import subprocess
import textwrap

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from hamiltonian_transformer import (
    HamiltonianTransformerConfig,
    HamiltonianTransformerForCausalLM,
    HamiltonianTransformerForSequenceClassification,
    HamiltonianTransformerModel,
)
from hamiltonian_transformer.cache_conventions import output_cache

from .conftest import PYTHON, subprocess_env

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
VARIANTS = {
    "default": {},
    "leapfrog_two_steps": dict(integrator="leapfrog", evolution_steps=2, initial_momentum="learned"),
    "window_entropy_learnable": dict(attention_window=5, attention_scale="entropy_invariant", learnable_energy=True),
}


def tiny_model(**overrides) -> HamiltonianTransformerForCausalLM:
    config = HamiltonianTransformerConfig.from_preset("tiny", pad_token_id=0, **overrides)
    return HamiltonianTransformerForCausalLM(config).eval()


def test_auto_classes_build_and_save_load_gives_identical_logits(tmp_path):
    config = AutoConfig.for_model("hamiltonian_transformer", **TINY)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert isinstance(model, HamiltonianTransformerForCausalLM)
    ids = torch.randint(0, 99, (2, 11))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert isinstance(AutoModel.from_pretrained(tmp_path), HamiltonianTransformerModel)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    assert isinstance(classifier, HamiltonianTransformerForSequenceClassification)


def test_a_config_saved_before_dynamics_existed_loads_with_the_dynamics_of_its_weights(tmp_path):
    """Checkpoints of the first design have no `dynamics` in config.json: they must keep their behaviour, not take
    today's default (which, on the same weights, gives other logits: the check below can fail)."""
    old = tiny_model(dynamics="mlp_velocity")
    old.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    assert saved["dynamics"] == "mlp_velocity"  # written even though it is not the default
    del saved["dynamics"]
    config_file.write_text(json.dumps(saved))
    ids = torch.randint(0, 99, (2, 9))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (reloaded.config.dynamics, reloaded.config.initial_momentum) == ("mlp_velocity", "zero")
    assert torch.equal(reloaded(ids).logits, old(ids).logits)
    as_new = AutoModelForCausalLM.from_pretrained(tmp_path, dynamics="separable").eval()
    assert not torch.allclose(as_new(ids).logits, old(ids).logits)


def test_a_checkpoint_keeps_its_energy_lambda_when_the_default_changes(tmp_path):
    """The default lambda went from 0.1 to 0.01; config.json always carries the value the weights were trained with
    (also when it was the default then), so such a checkpoint keeps 0.1 and its logits."""
    old = tiny_model(energy_lambda=0.1)
    old.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["energy_lambda"] == 0.1
    ids = torch.randint(0, 99, (2, 9))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.energy_lambda == 0.1
    assert torch.equal(reloaded(ids).logits, old(ids).logits)
    HamiltonianTransformerConfig().save_pretrained(tmp_path / "default")  # the default itself is written too
    assert json.loads((tmp_path / "default" / "config.json").read_text())["energy_lambda"] == 0.01


def test_default_dynamics_is_separable_and_round_trips(tmp_path):
    config = HamiltonianTransformerConfig()
    assert (config.dynamics, config.initial_momentum) == ("separable", "embedding")
    for preset in HamiltonianTransformerConfig.preset_names():
        assert HamiltonianTransformerConfig.from_preset(preset).dynamics == "separable"
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dynamics"] == "separable"
    assert HamiltonianTransformerConfig.from_pretrained(tmp_path).dynamics == "separable"


def test_separable_head_reads_the_momenta_and_mlp_velocity_the_positions():
    for dynamics, stream in (("separable", "p"), ("mlp_velocity", "q")):
        model = tiny_model(dynamics=dynamics).model
        captured: dict[str, torch.Tensor] = {}

        def keep(module, args, output, captured=captured):
            captured.update(q=output[0], p=output[1])

        handle = model.layers[-1].register_forward_hook(keep)
        hidden = model(torch.randint(0, 99, (1, 6))).last_hidden_state
        handle.remove()
        torch.testing.assert_close(hidden, model.norm(captured[stream]))


def test_learned_coefficients_and_step_sizes_survive_save_load(tmp_path):
    model = tiny_model(learnable_energy=True)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "energy" in name or "step_size" in name:
                parameter.add_(torch.rand_like(parameter))
    model.save_pretrained(tmp_path)
    reloaded = HamiltonianTransformerForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(1, 99, (1, 9))
    assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_trust_remote_code_load_without_the_package(tmp_path):
    model = tiny_model(integrator="leapfrog")
    model.save_pretrained(tmp_path / "ckpt")
    ids = torch.randint(1, 99, (2, 7))
    torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules["hamiltonian_transformer"] = None  # hide the installed package
        try:
            import hamiltonian_transformer
        except ImportError:
            pass
        else:
            raise SystemExit("package still importable")
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(r"{tmp_path / 'ckpt'}", trust_remote_code=True).eval()
        assert "hamiltonian_transformer" not in type(model).__module__.split(".")[0], type(model).__module__
        expected = torch.load(r"{tmp_path / 'expected.pt'}")
        assert torch.equal(model(expected["ids"]).logits, expected["logits"])
        print("remote code ok", type(model).__module__)
    """)
    result = subprocess.run(
        [PYTHON, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=subprocess_env(HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH=""),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok transformers_modules" in result.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_then_decode_equals_full_forward(variant):
    model = tiny_model(**VARIANTS[variant])
    ids = torch.randint(1, 99, (2, 14))
    full = model(ids, use_cache=False).logits
    out = model(ids[:, :9], use_cache=True)
    logits = [out.logits]
    for t in range(9, 14):
        out = model(ids[:, t : t + 1], cache=output_cache(out), use_cache=True)
        logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, dim=1), full, atol=1e-5, rtol=1e-4)


def test_energies_diagnostics_per_layer():
    model = tiny_model(integrator="leapfrog", evolution_steps=2)
    energies = model(torch.randint(1, 99, (2, 8)), output_energies=True).energies
    assert set(energies) == {"attention_energy", "kinetic_energy", "step_size"}
    assert all(v.shape == (2,) and torch.isfinite(v).all() for v in energies.values())
    torch.testing.assert_close(energies["step_size"], torch.ones(2))


def test_hidden_states_and_attentions_outputs():
    model = tiny_model()
    out = model(torch.randint(1, 99, (2, 8)), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (2, 4, 8, 8)


@pytest.mark.parametrize("problem_type,num_labels,labels", [
    ("regression", 1, lambda b: torch.randn(b)),
    ("single_label_classification", 3, lambda b: torch.randint(0, 3, (b,))),
    ("multi_label_classification", 3, lambda b: torch.randint(0, 2, (b, 3)).float()),
])
def test_sequence_classification_problem_types(problem_type, num_labels, labels):
    config = HamiltonianTransformerConfig.from_preset("tiny", pad_token_id=0, num_labels=num_labels,
                                                     problem_type=problem_type)
    model = HamiltonianTransformerForSequenceClassification(config).eval()
    ids = torch.randint(1, 99, (3, 7))
    out = model(ids, labels=labels(3))
    assert out.logits.shape == (3, num_labels) and torch.isfinite(out.loss)


def test_sequence_classification_pools_last_real_token_for_left_and_right_padding():
    config = HamiltonianTransformerConfig.from_preset("tiny", pad_token_id=0, num_labels=2)
    model = HamiltonianTransformerForSequenceClassification(config).eval()
    tokens = torch.randint(1, 99, (1, 6))
    alone = model(tokens).logits
    right = model(torch.cat([tokens, torch.zeros(1, 3, dtype=torch.long)], 1),
                  attention_mask=torch.tensor([[1] * 6 + [0] * 3])).logits
    left = model(torch.cat([torch.zeros(1, 3, dtype=torch.long), tokens], 1),
                 attention_mask=torch.tensor([[0] * 3 + [1] * 6])).logits
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)


def test_trainer_lowers_sequence_classification_loss(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(1, 99, (64, 8))
    labels = (ids[:, 0] > 49).long()  # the class is readable from the first token
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    config = HamiltonianTransformerConfig.from_preset("tiny", pad_token_id=0, num_labels=2)
    model = HamiltonianTransformerForSequenceClassification(config)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, per_device_eval_batch_size=64,
                             num_train_epochs=8, learning_rate=3e-3, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, logging_strategy="no", seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("overrides,match", [
    (dict(evolution_steps=0), "evolution_steps"),
    (dict(evolution_steps=6), "evolution_steps"),
    (dict(integrator="rk4"), "integrator.*'euler', 'symplectic_euler', 'leapfrog'"),
    (dict(reversible=True, integrator="euler"), "reversible"),
    (dict(hidden_size=30), "hidden_size.*num_attention_heads"),
    (dict(attention_scale="log"), "attention_scale"),
    (dict(energy_lambda=0.5, energy_gamma=1.0), "1/sqrt\\(head_dim\\)"),
    (dict(attention_window=0), "attention_window"),
    (dict(hidden_dropout=1.5), "hidden_dropout"),
    (dict(step_size=0.0), "step_size"),
])
def test_invalid_config_values_raise_naming_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        HamiltonianTransformerConfig.from_preset("tiny", **overrides)


def test_unknown_preset_names_the_available_ones():
    with pytest.raises(ValueError, match="tiny, small, base"):
        HamiltonianTransformerConfig.from_preset("huge")


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="token id 99.*vocab_size=99"):
        model(torch.tensor([[1, 2, 99]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="attention_mask.*shape"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="max_position_embeddings`=512"):
        model(torch.randint(1, 99, (1, 513)))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    for shape, what in [((2, 0), "empty sequence"), ((0, 4), "empty batch")]:
        with pytest.raises(ValueError, match=f"input_ids` has shape .*{what}"):
            model(torch.zeros(shape, dtype=torch.long))


def test_static_cache_is_refused_with_a_clear_error():
    """Each layer keeps E growing key/value slots side by side; a StaticCache cannot hold them."""
    model = tiny_model()
    ids = torch.randint(1, 99, (1, 5))
    with pytest.raises(ValueError, match="StaticCache with StaticLayer layers is not supported.*DynamicCache"):
        model.generate(ids, cache_implementation="static", max_new_tokens=3, do_sample=False, pad_token_id=0)
    greedy = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, cache_implementation="dynamic", **greedy), model.generate(ids, **greedy))


def test_preset_sizes():
    counts = {}
    for name in ("small", "base"):
        config = HamiltonianTransformerConfig.from_preset(name)
        with torch.device("meta"):
            counts[name] = HamiltonianTransformerForCausalLM(config).num_parameters()
    assert 20e6 <= counts["small"] <= 30e6, counts
    assert 110e6 <= counts["base"] <= 140e6, counts
