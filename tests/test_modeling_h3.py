"""H3 as a Hugging Face model: prefill + O(1) steps equal the FFT forward, generate, save/load, remote code, Trainer."""

import subprocess
import textwrap

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, Trainer, TrainingArguments

from hamiltonian_transformer import H3Config, H3ForCausalLM, H3ForSequenceClassification
from hamiltonian_transformer.cache_conventions import LINEAR_LAYERS_COUNT_TOKENS, output_cache
from hamiltonian_transformer.modeling_h3 import seen_tokens

from .conftest import PYTHON, subprocess_env

VARIANTS = {
    "hybrid": {},
    "pure": dict(attn_layer_idx=[]),
    "multihead_legs_zoh": dict(head_dim=2, ssm_init="legs", discretization="zoh", attn_layer_idx=[0]),
    "pure_trainable_shift_b": dict(attn_layer_idx=[], shift_trainable_b=True),
    "hybrid_without_mlp": dict(intermediate_size=0),
}


def tiny_h3(**overrides) -> H3ForCausalLM:
    return H3ForCausalLM(H3Config.from_preset("tiny", pad_token_id=0, **overrides)).eval()


def test_layer_types_and_cache_layers_follow_attn_layer_idx():
    config = H3Config.from_preset("tiny", num_hidden_layers=3, attn_layer_idx=[1])
    assert config.layer_types == ["linear_attention", "full_attention", "linear_attention"]
    cache = DynamicCache(config=config)
    assert [type(layer).__name__ for layer in cache.layers] == ["LinearAttentionLayer", "DynamicLayer",
                                                                "LinearAttentionLayer"]
    assert H3Config(d_model=64, n_layer=2, attn_layer_idx=[]).hidden_size == 64


def prefill_then_step_logits(model, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of a prefill of `prefill` tokens followed by one cached step per remaining token."""
    out = model(ids[:, :prefill], use_cache=True)
    logits = [out.logits]
    for t in range(prefill, ids.shape[1]):
        out = model(ids[:, t : t + 1], cache=output_cache(out), use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_then_step_equals_full_forward_at_every_position(variant):
    model = tiny_h3(**VARIANTS[variant])
    ids = torch.randint(1, 99, (2, 40))
    full = model(ids, use_cache=False).logits
    torch.testing.assert_close(prefill_then_step_logits(model, ids, 17), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_knows_how_many_tokens_it_has_seen(variant):
    """The model's own count, and `cache.get_seq_length()` (by which generate() continues from a cache) wherever the
    release answers it: a prompt longer than the shift window, a chunk shorter than it, then single steps."""
    model = tiny_h3(**VARIANTS[variant])
    kernel = model.config.shift_kernel_size
    cache, seen = None, 0
    for length in [kernel + 3, 2, 1, 1]:
        cache = output_cache(model(torch.randint(1, 99, (2, length)), cache=cache, use_cache=True))
        seen += length
        assert seen_tokens(cache, model.config) == seen
        if LINEAR_LAYERS_COUNT_TOKENS or "full_attention" in model.config.layer_types:  # else the release refuses
            assert int(cache.get_seq_length()) == seen


def test_decode_state_size_does_not_grow_with_context():
    model = tiny_h3(attn_layer_idx=[])
    cache = output_cache(model(torch.randint(1, 99, (1, 50)), use_cache=True))
    sizes = [sum(t.numel() for layer in cache.layers for t in layer.conv_states.values() if t is not None)]
    for _ in range(20):
        cache = output_cache(model(torch.randint(1, 99, (1, 1)), cache=cache, use_cache=True))
    sizes.append(sum(t.numel() for layer in cache.layers for t in layer.conv_states.values() if t is not None))
    assert sizes[0] == sizes[1]


def test_save_load_and_trust_remote_code_give_identical_logits(tmp_path):
    from hamiltonian_transformer import PRESETS

    config = AutoConfig.for_model("h3", **PRESETS["h3"]["tiny"], ssm_init="s4d_inv")
    model = AutoModelForCausalLM.from_config(config).eval()
    assert isinstance(model, H3ForCausalLM)
    ids = torch.randint(1, 99, (2, 9))
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the child (subprocess_env): the same summation order, bit for bit
    try:
        torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "expected.pt")
    finally:
        torch.set_num_threads(threads)
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules["hamiltonian_transformer"] = None  # hide the installed package
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(r"{tmp_path / 'ckpt'}", trust_remote_code=True).eval()
        expected = torch.load(r"{tmp_path / 'expected.pt'}")
        assert torch.equal(model(expected["ids"]).logits, expected["logits"])
        greedy = model.generate(expected["ids"], max_new_tokens=5, do_sample=False)
        print("remote code ok", type(model).__module__, tuple(greedy.shape))
    """)
    result = subprocess.run([PYTHON, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=subprocess_env(HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH=""))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok transformers_modules" in result.stdout


def test_intermediate_size_0_leaves_the_mlp_out_and_survives_a_round_trip(tmp_path):
    model = tiny_h3(intermediate_size=0)
    with_mlp = tiny_h3()
    names = {name for name, _ in model.named_parameters()}
    assert names == {name for name, _ in with_mlp.named_parameters() if ".mlp" not in name}
    # The block is the mixer's residual alone: the same weights without the MLP give the same logits as a model whose
    # MLP outputs 0.
    model.load_state_dict({k: v for k, v in with_mlp.state_dict().items() if ".mlp" not in k})
    for layer in with_mlp.model.layers:
        torch.nn.init.zeros_(layer.mlp.down_proj.weight)
        torch.nn.init.zeros_(layer.mlp.down_proj.bias)
    ids = torch.randint(1, 99, (2, 12))
    torch.testing.assert_close(model(ids).logits, with_mlp(ids).logits)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.intermediate_size == 0
    assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_trainer_lowers_classification_loss_with_gradient_checkpointing(tmp_path):
    ids = torch.randint(1, 99, (64, 8))
    labels = (ids[:, 0] > 49).long()
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    config = H3Config.from_preset("tiny", pad_token_id=0, num_labels=2)
    model = H3ForSequenceClassification(config)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=8,
                             learning_rate=3e-3, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                             logging_strategy="no", seed=0, activation_checkpointing=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < 0.7 * before


def test_gradient_checkpointing_gives_same_gradients():
    plain = H3ForCausalLM(H3Config.from_preset("tiny")).train()
    checkpointed = H3ForCausalLM(H3Config.from_preset("tiny")).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.activation_checkpointing_enable()
    ids = torch.randint(0, 99, (2, 16))
    for model in (plain, checkpointed):
        model(ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("overrides,match", [
    (dict(attn_layer_idx=[2]), "attn_layer_idx"),
    (dict(attn_layer_idx=[0, 0]), "twice"),
    (dict(head_dim=3), "head_dim"),
    (dict(d_state=0), "d_state"),
    (dict(d_state=15), "d_state"),
    (dict(ssm_init="hippo"), "ssm_init.*'s4d_lin', 's4d_inv', 'legs'"),
    (dict(discretization="euler"), "discretization"),
    (dict(dt_min=0.1, dt_max=0.01), "dt_max"),
    (dict(shift_trainable_b=1), "`shift_trainable_b`=1 must be True or False"),
    (dict(intermediate_size=-1), "`intermediate_size`=-1"),
])
def test_invalid_config_values_raise_naming_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        H3Config.from_preset("tiny", **overrides)


def test_bad_inputs_raise_clear_errors():
    model = tiny_h3()
    with pytest.raises(ValueError, match="token id 120"):
        model(torch.tensor([[1, 120]]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3))
    for shape, what in [((2, 0), "empty sequence"), ((0, 4), "empty batch")]:  # (b, 0) used to hang in the FFT
        with pytest.raises(ValueError, match=f"input_ids` has shape .*{what}"):
            model(torch.zeros(shape, dtype=torch.long))
    with pytest.raises(ValueError, match="inputs_embeds` has shape .*empty sequence"):
        model(inputs_embeds=torch.zeros(1, 0, model.config.hidden_size))


def test_base_preset_is_the_papers_125m():
    config = H3Config.from_preset("base")
    assert (config.num_hidden_layers, config.hidden_size, config.attn_layer_idx) == (12, 768, [1, 8])
    with torch.device("meta"):
        count = H3ForCausalLM(config).num_parameters()
    assert 110e6 <= count <= 140e6, count


@pytest.mark.parametrize("variant", ["hybrid", "pure"])
def test_static_cache_equals_dynamic_cache(variant):
    from transformers import StaticCache

    model = tiny_h3(**VARIANTS[variant])
    ids = torch.randint(1, 99, (2, 7))
    cache = StaticCache(config=model.config, max_cache_len=32)
    first = model(ids, cache=cache, use_cache=True)
    second = model(ids, cache=output_cache(first), use_cache=True)
    full = model(torch.cat([ids, ids], 1), use_cache=False).logits
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, atol=1e-4, rtol=1e-4)
    if variant == "hybrid":
        kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0, output_logits=True,
                      return_dict_in_generate=True)
        static = model.generate(ids, cache_implementation="static", **kwargs)
        dynamic = model.generate(ids, **kwargs)
        torch.testing.assert_close(torch.stack(static.logits), torch.stack(dynamic.logits), atol=1e-5, rtol=1e-5)


def test_trainable_shift_b_is_saved_loaded_and_decoded_like_the_fft_forward(tmp_path):
    model = tiny_h3(attn_layer_idx=[], shift_trainable_b=True)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mixer.shift_ssm.B.normal_()  # away from e_1, where the taps are C alone
    ids = torch.randint(1, 99, (2, 30))
    full = model(ids, use_cache=False).logits
    torch.testing.assert_close(prefill_then_step_logits(model, ids, 11), full, atol=1e-4, rtol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.shift_trainable_b
    torch.testing.assert_close(loaded.model.layers[0].mixer.shift_ssm.B, model.model.layers[0].mixer.shift_ssm.B)
    torch.testing.assert_close(loaded(ids, use_cache=False).logits, full)
    fixed = tiny_h3(attn_layer_idx=[])
    assert not any(name.endswith("shift_ssm.B") for name, _ in fixed.named_parameters())
