"""Tests for the benchmarks: matched comparators, speed.py and quality.py end to end (data: test_data_synthetic)."""

import dataclasses
import json
import math
import queue
import re
import statistics
import sys
from pathlib import Path

import pytest
import torch

from hamiltonian_transformer.data.synthetic import induction_head

BENCH_DIR = Path(__file__).resolve().parents[1] / "scripts" / "bench"
sys.path.insert(0, str(BENCH_DIR))

import attention_widths  # noqa: E402
import comparators  # noqa: E402
import dynamics_ablation  # noqa: E402
import interleaved_decode  # noqa: E402
import interleaved_train  # noqa: E402
import quality  # noqa: E402
import seed_table  # noqa: E402
import speed  # noqa: E402

# Comparators


def test_matched_llama_and_mamba_have_about_the_hamiltonian_parameter_count():
    shape = comparators.ModelShape.from_preset("tiny", max_length=64)
    reference = comparators.describe("hamiltonian:symplectic_euler", shape)["parameters"]
    llama = comparators.describe("llama", shape)
    assert abs(llama["parameters"] - reference) / reference < 0.02
    assert llama["hidden_size"] == 32 and llama["num_hidden_layers"] == 2 and llama["vocab_size"] == 99
    mamba = comparators.describe("mamba", shape)
    assert abs(mamba["parameters"] - reference) / reference < 0.25


@pytest.mark.parametrize("name", comparators.MODEL_NAMES)
def test_every_benchmark_model_builds_and_returns_logits(name):
    shape = comparators.ModelShape.from_preset("tiny", max_length=16)
    model = comparators.build_model(name, shape)
    logits = model(input_ids=torch.randint(0, 99, (2, 12))).logits
    assert logits.shape == (2, 12, 99)
    # token 0 is data in the 5 x 5 recall task: no model may freeze its embedding as a padding row
    assert model.get_input_embeddings().padding_idx is None


def test_h3_variants_set_attention_layers_and_shift_length():
    shape = comparators.ModelShape.from_preset("tiny", max_length=16)
    assert comparators.model_config("h3", shape)[1].attn_layer_idx == [1]
    assert comparators.model_config("h3:pure", shape)[1].attn_layer_idx == []
    no_shift = comparators.model_config("h3:pure:no_shift", shape)[1]
    assert no_shift.attn_layer_idx == [] and no_shift.shift_kernel_size == 1
    shift_b = comparators.model_config("h3:pure:shift_b", shape)[1]
    assert shift_b.attn_layer_idx == [] and shift_b.shift_trainable_b
    assert not comparators.model_config("h3:pure", shape)[1].shift_trainable_b
    safari_init = comparators.model_config("h3:pure:shift_b:safari_init", shape)[1]
    assert safari_init.shift_trainable_b and safari_init.hidden_act == "gelu_pytorch_tanh"
    assert comparators.model_config("h3:pure:shift_b", shape)[1].hidden_act == "gelu"


def test_zoology_h3_is_the_three_ablations_with_the_state_as_long_as_the_sequence():
    shape = comparators.ModelShape.from_preset("tiny", max_length=31)
    plain = comparators.model_config("h3:pure", shape)[1]
    assert (plain.intermediate_size, plain.head_dim, plain.d_state) == (64, 1, 64)
    assert comparators.model_config("h3:pure:no_mlp", shape)[1].intermediate_size == 0
    assert comparators.model_config("h3:pure:head2", shape)[1].head_dim == 2
    shift_b = comparators.model_config("h3:pure:shift_b:no_mlp", shape)[1]
    assert (shift_b.shift_trainable_b, shift_b.intermediate_size, shift_b.head_dim) == (True, 0, 1)
    head2 = comparators.model_config("h3:pure:no_mlp:head2", shape)[1]
    assert (head2.shift_trainable_b, head2.intermediate_size, head2.head_dim) == (False, 0, 2)
    zoology = comparators.model_config("h3:pure:zoology", shape)[1]
    assert zoology.attn_layer_idx == [] and zoology.shift_trainable_b
    assert (zoology.intermediate_size, zoology.head_dim, zoology.d_state, zoology.shift_kernel_size) == (0, 2, 32, 32)


def test_safari_init_redraws_only_the_mlp_output_with_the_rescaled_std():
    plain, safari = _tiny_model("h3:pure:shift_b"), _tiny_model("h3:pure:shift_b:safari_init")
    for plain_layer, safari_layer in zip(plain.model.layers, safari.model.layers, strict=True):
        # 2 layers: 0.02 / sqrt(4); each matrix has 32 x 64 entries, so the sample std is within 3% of its std
        assert abs(safari_layer.mlp.down_proj.weight.std().item() - 0.01) < 0.001
        assert abs(plain_layer.mlp.down_proj.weight.std().item() - 0.02) < 0.002
        assert abs(safari_layer.mlp.up_proj.weight.std().item() - 0.02) < 0.002
    redrawn = {f"model.layers.{i}.mlp.down_proj.weight" for i in range(2)}
    for (name, plain_param), safari_param in zip(plain.named_parameters(), safari.parameters(), strict=True):
        assert torch.equal(plain_param, safari_param) != (name in redrawn), name  # same seed: all else is equal


def test_config_overrides_reach_every_model_and_unknown_fields_are_named():
    shape = comparators.ModelShape.from_preset("tiny", max_length=16)
    for name in ("llama", "h3", "hamiltonian:symplectic_euler"):
        assert comparators.model_config(name, shape, attention_dropout=0.1)[1].attention_dropout == 0.1
    with pytest.raises(ValueError, match=r"\['energy_lambda'\] are not fields of LlamaConfig"):
        comparators.model_config("llama", shape, energy_lambda=0.1)


def test_unknown_benchmark_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown"):
        comparators.build_model("gpt5", comparators.ModelShape.from_preset("tiny", 16))


# speed.py


def test_speed_quick_run_writes_json_with_every_model_stage_and_llama_ratio(tmp_path):
    argv = ["--quick", "--models", "hamiltonian:symplectic_euler,llama", "--sections", "sweep", "--seq_lens", "32",
            "--prompt_lens", "16", "--new_tokens", "3", "--repeats", "1", "--matmul_size", "256",
            "--output_dir", str(tmp_path)]
    speed.main(argv)
    results = json.loads((tmp_path / "speed.json").read_text())
    assert results["machine"]["torch"] == torch.__version__
    assert results["models"]["llama"]["parameters"] > 0
    for model in ("hamiltonian:symplectic_euler", "llama"):
        records = {(r["stage"], r["length"]): r for r in results["sweep"][model]}
        assert set(records) == {("forward", 32), ("train", 32), ("decode", 16), ("decode_static", 16)}
        static = records.pop(("decode_static", 16))
        assert all(r["status"] == "ok" for r in records.values()), records
        train = records[("train", 32)]
        assert train["tokens_per_s"] > 0 and 0 < train["mfu"] and train["peak_memory_bytes"] >= 0
        assert records[("decode", 16)]["ms_per_token"] > 0
        # Llama decodes with a static KV cache too; the Hamiltonian Transformer's growing KV slots refuse it.
        assert static["status"] == ("ok" if model == "llama" else "unsupported"), static
    llama_train = next(r for r in results["sweep"]["llama"] if r["stage"] == "train")
    assert llama_train["tokens_per_s_vs_llama"] == 1.0
    assert "Training step, tokens/s" in (tmp_path / "speed.md").read_text()


def test_energy_worker_reports_paired_ratios_and_train_throughput():
    results = queue.Queue()
    task = {"device": "cpu", "threads": None, "shape": vars(comparators.ModelShape.from_preset("tiny", 32)),
            "batch_size": 1, "repeats": 2, "energy_seq_lens": [32]}
    speed.energy_worker(task, results)
    record, done = results.get_nowait(), results.get_nowait()
    assert done["status"] == "done" and record["status"] == "ok" and record["length"] == 32
    model = record["model_forward_backward"]
    assert model["repeats"] == 2 and model["paired_min"] <= model["paired_median"] <= model["paired_max"]
    assert model["ratio"] == pytest.approx(model["energy_seconds"] / model["lambda0_seconds"])
    assert record["attention_op_forward_backward"]["ratio"] > 0
    assert record["train_step"]["hamiltonian_tokens_per_s"] > 0 and record["train_step"]["llama_tokens_per_s"] > 0


def test_stage_budget_skips_sizes_predicted_to_overrun():
    budget = speed.StageBudget(seconds=10.0, default_exponent=2.0)
    assert budget.check(128, calls=3) is None  # nothing measured yet: no prediction
    budget.history += [(128, 0.1)]
    assert budget.predicted(256, calls=1) == pytest.approx(0.4)  # one size: the default exponent
    budget.history += [(256, 0.2)]  # linear growth fitted from two sizes
    assert budget.predicted(1024, calls=1) == pytest.approx(0.8)
    assert budget.check(1024, calls=3) is None
    assert budget.check(65536, calls=3).startswith("timeout")


def test_measurement_past_its_stage_budget_is_interrupted_and_recorded_as_timeout():
    results = queue.Queue()
    # Mamba's sequential scan on CPU makes a 512-token training step far longer than the 0.3 s budget.
    task = {"device": "cpu", "threads": None, "shape": vars(comparators.ModelShape.from_preset("tiny", 1024)),
            "batch_size": 1, "repeats": 1, "budget_s": 0.3, "model": "mamba", "stages": ["train"],
            "seq_lens": [512, 1024], "prompt_lens": [], "new_tokens": 2, "peak_flops": 1e9}
    speed.model_worker(task, results)
    records = [results.get_nowait() for _ in range(3)]
    assert [r["status"] for r in records[:2]] == ["timeout", "timeout"]
    assert "stopped after" in records[0]["note"] and records[2] == {"stage": "done"}


def test_write_plots_draws_each_measured_stage_and_skips_empty_ones(tmp_path):
    def ok(stage, length, **figures):
        return {"stage": stage, "length": length, "status": "ok", **figures}

    results = {"machine": {"cpu": "test cpu"}, "sweep": {
        "h3": [ok("train", 256, tokens_per_s=10.0, peak_memory_bytes=2**20), ok("train", 512, tokens_per_s=9.0,
               peak_memory_bytes=2**21), {"stage": "train", "length": 1024, "status": "timeout", "note": "timeout"}],
        "llama": [ok("train", 256, tokens_per_s=11.0, peak_memory_bytes=2**20),
                  {"stage": "decode_static", "length": 128, "status": "unsupported", "note": "unsupported"}],
    }}
    written = speed.write_plots(results, tmp_path)
    assert written == ["train_tokens_per_s.png", "train_peak_memory.png"]
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_h3_vs_llama_summary_compares_h3_with_llama_at_its_checkpoints():
    def ok(stage, length, **figures):
        return {"stage": stage, "length": length, "status": "ok", **figures}

    sweep = {
        "h3": [ok("train", 2048, tokens_per_s=300.0), ok("decode", 128, ms_per_token=10.0),
               ok("decode", 4096, ms_per_token=11.0), ok("forward", 512, peak_memory_bytes=512 * 100),
               ok("decode_static", 128, ms_per_token=10.0), ok("decode_static", 4096, ms_per_token=10.5)],
        "llama": [ok("train", 2048, tokens_per_s=200.0), ok("decode", 4096, ms_per_token=33.0),
                  ok("decode_static", 4096, ms_per_token=21.0)],
    }
    summary = speed.h3_vs_llama_summary(sweep)["h3"]
    assert summary["train_T2048"]["vs_llama"] == pytest.approx(1.5)
    assert summary["train_T512"] is None
    assert summary["decode_long_over_short"] == pytest.approx(1.1)
    assert summary["llama_over_h3_ms_per_token_at_long_prompt"] == pytest.approx(3.0)
    assert summary["static_decode_long_over_short"] == pytest.approx(1.05)
    assert summary["static_llama_over_h3_ms_per_token_at_long_prompt"] == pytest.approx(2.0)
    assert summary["forward_peak_memory_bytes_per_token"] == {"512": 100.0}


# quality.py


def test_quality_quick_sections_train_every_model_and_report_mean_and_spread(tmp_path):
    argv = ["--quick", "--sections", "synthetic,mqar,lm", "--models", "llama,h3:pure", "--seeds", "0,1",
            "--synthetic_train_examples", "8", "--synthetic_test_examples", "8", "--mqar_train_examples", "8",
            "--mqar_test_examples", "8", "--mqar_configs", "16:2", "--mqar_widths", "32", "--lm_tokens", "256",
            "--lm_max_chars", "20000", "--lm_vocab_size", "300", "--lm_seq_len", "16", "--lm_eval_blocks", "4",
            "--batch_size", "4", "--output_dir", str(tmp_path)]
    quality.main(argv)
    results = json.loads((tmp_path / "quality.json").read_text())
    assert set(results["synthetic"]) == {"induction_head", "associative_recall", "associative_recall_5x5"}
    for task in results["synthetic"].values():
        accuracy = task["models"]["llama"]["accuracy"]
        assert accuracy["n"] == 2 and len(accuracy["values"]) == 2 and 0.0 <= accuracy["mean"] <= 1.0
        assert 0.0 <= task["floor"]["accuracy"] <= 1.0 and task["recipe"]["epochs"] < task["paper_recipe"]["epochs"]
        per_seed = task["models"]["llama"]["per_seed"][0]
        assert len(per_seed["accuracy_by_epoch"]) == per_seed["epochs"] == task["recipe"]["epochs"]
    assert results["synthetic"]["associative_recall"]["models"]["h3:pure"]["paper"] == [0.998, "H3"]
    mqar = results["mqar"]["16x2@32"]
    assert set(mqar["models"]) == {"llama", "h3:pure"} and mqar["floor"]["accuracy"] == pytest.approx(0.5)
    perplexity = results["lm"]["models"]["h3:pure"]["validation_perplexity"]
    assert perplexity["min"] <= perplexity["mean"] <= perplexity["max"] and perplexity["mean"] > 1.0
    report = (tmp_path / "quality.md").read_text()
    assert "(n=2)" in report and "MQAR" in report and "heuristic floor" in report
    assert "H3 paper (table 2)" in report and "1.000 (H3)" in report and "0.998 (H3)" in report
    assert "of the paper's 400 epochs" in report and "Load average" in report
    runs = seed_table.read_runs(tmp_path, {"h3:pure": "renamed"})  # every seed of every task and model
    for task, setting in results["synthetic"].items():
        for model, code in (("llama", "`llama`"), ("h3:pure", "`renamed`")):
            lasts = [run.last for run in runs if run.task == task and code in run.code]
            assert lasts == setting["models"][model]["accuracy"]["values"]
    for model, code in (("llama", "`llama`"), ("h3:pure", "`renamed`")):  # MQAR: each model at its reported lr
        entry = mqar["models"][model]
        lasts = [run.last for run in runs if run.task == "MQAR (16, 2), width 32" and code in run.code
                 and f"lr {entry['learning_rate']:g}, 1 of the paper's 64 epochs" in run.code]
        assert lasts == entry["accuracy"]["values"]


def test_synthetic_data_seed_draws_another_data_set_for_every_training_seed(monkeypatch):
    drawn = []
    monkeypatch.setattr(quality, "recall_models", lambda models, shape, seeds, recipe, train_set, test_set, *rest:
                        drawn.append((train_set[0], test_set[0])) or {})
    for data_seed in ("0", "0", "1"):
        args = quality.parse_args(["--quick", "--synthetic_tasks", "associative_recall", "--synthetic_data_seed",
                                   data_seed, "--synthetic_train_examples", "16", "--synthetic_test_examples", "8"])
        results = quality.synthetic_section(args, ["llama"], log=lambda message: None)
        assert results["associative_recall"]["data_seed"] == int(data_seed)
    assert quality.parse_args([]).synthetic_data_seed == quality.SAFARI_DATA_SEED == 0
    (train_0, test_0), (train_again, test_again), (train_1, test_1) = drawn
    assert torch.equal(train_0, train_again) and torch.equal(test_0, test_again)
    assert not torch.equal(train_1, train_0) and not torch.equal(test_1, test_0)


def test_synthetic_data_file_replaces_the_drawn_sets_after_checking_task_shape_and_size(monkeypatch, tmp_path, capsys):
    trained_on = []
    monkeypatch.setattr(quality, "recall_models", lambda models, shape, seeds, recipe, train_set, test_set, *rest:
                        trained_on.append((train_set, test_set)) or {})
    task = quality.SYNTHETIC_TASKS["induction_head"]
    generator = torch.Generator().manual_seed(7)
    sets = {"train": task.generate(16, generator=generator, loss_positions="all"),
            "test": task.generate(8, generator=generator, loss_positions="answer")}
    torch.save({"task": "induction_head", "source": "a test", **sets}, tmp_path / "sets.pt")
    flags = ["--quick", "--synthetic_train_examples", "16", "--synthetic_test_examples", "8"]

    def section(tasks, path, *more):
        args = quality.parse_args([*flags, *more, "--synthetic_tasks", tasks, "--synthetic_data_file", str(path)])
        return quality.synthetic_section(args, ["llama"], log=lambda message: None)

    result = section("induction_head", tmp_path / "sets.pt")["induction_head"]
    assert result["data"] == "sets.pt: a test" and result["data_seed"] is None
    (train, test), = trained_on
    assert all(map(torch.equal, train, sets["train"])) and all(map(torch.equal, test, sets["test"]))
    with pytest.raises(SystemExit, match="holds the sets of 'induction_head', not 'associative_recall'"):
        section("associative_recall", tmp_path / "sets.pt")
    with pytest.raises(SystemExit, match=r"its train inputs \(16, 31\) .* are not 32 sequences of 31 ids below 20"):
        section("induction_head", tmp_path / "sets.pt", "--synthetic_train_examples", "32")
    with pytest.raises(SystemExit):
        quality.parse_args(["--synthetic_data_file", str(tmp_path / "sets.pt")])  # every task, one file
    assert "holds one task's sets: name it alone in --synthetic_tasks" in capsys.readouterr().err


def test_quality_defaults_are_the_papers_recipes_seeds_and_settings():
    args = quality.parse_args([])
    assert args.budget_fraction == 1.0 and args.synthetic_seeds == [0, 1, 2] and args.lm_seeds == [0, 1]
    assert args.mqar_seeds == [0] and args.mqar_configs == [(64, 4), (128, 8)] and args.mqar_widths == [64, 128]
    assert args.lm_tokens >= 5_000_000
    # safari: associative_recall/{base,vocab_size_10}.yaml, induction_head/base.yaml, icl_synthetics.yaml
    recall = quality.run_recipe(quality.SAFARI_ASSOCIATIVE_RECALL, args, "synthetic")
    assert recall == quality.SAFARI_ASSOCIATIVE_RECALL
    assert (recall.train_examples, recall.test_examples, recall.epochs, recall.batch_size) == (5000, 500, 200, 32)
    assert recall.learning_rates == (5e-4,) and recall.weight_decay == 0.1 and recall.betas == (0.9, 0.999)
    assert recall.steps_per_epoch == 157 and recall.steps == 31_400 and recall.shuffle
    induction = quality.SAFARI_INDUCTION_HEAD
    assert induction.epochs == 400 and induction.steps == 62_800 and induction.min_lr_ratio == 0.1
    tasks = quality.SYNTHETIC_TASKS
    assert tasks["associative_recall"].recipe == recall and tasks["associative_recall_5x5"].recipe == recall
    assert tasks["induction_head"].recipe == induction
    for task in tasks.values():
        inputs, targets = task.generate(4, generator=torch.Generator().manual_seed(0), loss_positions="all")
        assert inputs.shape == (4, task.length) and (targets != -100).all()  # the loss on every next token
    # Zoology: figure 2 configs and train.py
    zoology = quality.run_recipe(quality.ZOOLOGY_MQAR, args, "mqar")
    assert zoology == quality.ZOOLOGY_MQAR and zoology.steps == 196 * 64 and zoology.batch_size == 512
    assert zoology.learning_rates == pytest.approx((1e-4, 4.6416e-4, 2.1544e-3, 1e-2), rel=1e-4)
    assert zoology.early_stop_accuracy == 0.99 and not zoology.shuffle
    # dropout of the papers' models: safari's h3/s4d/transformer.yaml, zoology/config.py
    assert (recall.embedding_dropout, recall.attention_dropout) == (0.1, 0.1)
    assert (induction.embedding_dropout, induction.attention_dropout) == (0.1, 0.1)
    assert (zoology.embedding_dropout, zoology.attention_dropout) == (0.1, 0.0)
    # weight decay where the papers' code puts it: safari's OptimModule.register, zoology/train.py
    assert (recall.decay_groups, induction.decay_groups, zoology.decay_groups) == ("safari", "safari", "all")


def _lr_after(schedule, steps: int) -> float:
    for _ in range(steps):
        schedule.optimizer.step()  # no gradients: only keeps torch's step-order check quiet
        schedule.step()
    return schedule.get_last_lr()[0]


@pytest.mark.parametrize(
    "recipe, checkpoints",
    [
        # safari's linear_warmup: warm-up over 157 * ceil(200 / 10) = 3140 steps, linear to 0 at 31,400.
        (quality.SAFARI_ASSOCIATIVE_RECALL, [(1570, 2.5e-4), (3140, 5e-4), (17_270, 2.5e-4), (31_400, 0.0)]),
        # safari's induction head (timm's cosine): warm-up from 1e-6 over 6280 steps, then the cosine over all
        # 62,800 steps from 5e-4 to 5e-5, joined at 10% (5e-5 + 2.25e-4 * (1 + cos 18 degrees)), 2.75e-4 halfway.
        (quality.SAFARI_INDUCTION_HEAD, [(0, 1e-6), (3140, 2.505e-4), (6280, 4.8898772e-4), (31_400, 2.75e-4),
                                         (62_800, 5e-5)]),
    ],
)
def test_safari_schedules_reach_the_configs_learning_rates(recipe, checkpoints):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=recipe.learning_rates[0])
    schedule, interval = quality.learning_rate_schedule(optimizer, recipe)
    assert interval == "step"
    done = 0
    for step, lr in checkpoints:
        assert _lr_after(schedule, step - done) == pytest.approx(lr, abs=1e-9)
        done = step


def test_timm_cosine_floor_is_one_learning_rate_for_every_group():
    # timm's lr_min is a learning rate, not a fraction: an SSM group at half the main rate decays to the same floor
    optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 2e-3},
                                   {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-3}])
    schedule, _ = quality.learning_rate_schedule(optimizer, quality.SAFARI_INDUCTION_HEAD)
    _lr_after(schedule, 6280)
    assert schedule.get_last_lr() == pytest.approx([2e-4 + 0.9e-3 * 1.9510565, 2e-4 + 0.4e-3 * 1.9510565])
    _lr_after(schedule, 62_800 - 6280)
    assert schedule.get_last_lr() == pytest.approx([2e-4, 2e-4])


def test_zoology_schedule_is_a_cosine_over_epochs_without_warm_up():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule, interval = quality.learning_rate_schedule(optimizer, quality.ZOOLOGY_MQAR)
    assert interval == "epoch" and schedule.get_last_lr()[0] == 1e-3
    assert _lr_after(schedule, 32) == pytest.approx(5e-4) and _lr_after(schedule, 32) == pytest.approx(0.0)


def test_budget_fraction_scales_the_epochs_and_the_report_says_so():
    args = quality.parse_args(["--budget_fraction", "0.05"])
    recipe = quality.run_recipe(quality.SAFARI_ASSOCIATIVE_RECALL, args, "synthetic")
    assert recipe.epochs == 10 and recipe.steps == 1570 and recipe.train_examples == 5000
    statement = quality.budget_statement(quality.SAFARI_ASSOCIATIVE_RECALL, recipe)
    assert "10 of the paper's 200 epochs" in statement and "1,570 of 31,400 steps" in statement
    assert "learning rates" not in statement and "weight decay" not in statement
    paper = quality.SAFARI_ASSOCIATIVE_RECALL
    assert quality.budget_statement(paper, paper).startswith("the paper's, 200 epochs")
    with pytest.raises(SystemExit):
        quality.parse_args(["--budget_fraction", "0"])


def test_budget_statement_names_the_learning_rates_and_decay_groups_that_differ_from_the_paper():
    args = quality.parse_args(["--mqar_learning_rates", "2.15e-3", "--decay_groups", "family"])
    recipe = quality.run_recipe(quality.ZOOLOGY_MQAR, args, "mqar")
    statement = quality.budget_statement(quality.ZOOLOGY_MQAR, recipe)
    assert "64 of the paper's 64 epochs" in statement
    assert "learning rates 0.00215 (the paper's: 0.0001, 0.000464, 0.00215, 0.01)" in statement
    assert (f"weight decay {quality.DECAY_GROUP_TEXT['family']} (the paper's: "
            f"{quality.DECAY_GROUP_TEXT['all']})") in statement


def test_order_seed_offset_draws_another_batch_order_from_the_same_initial_weights():
    args = quality.parse_args(["--order_seed_offset", "1000"])
    recipe = quality.run_recipe(quality.SAFARI_INDUCTION_HEAD, args, "synthetic")
    assert recipe.order_seed_offset == 1000
    assert "the batch order drawn from seed + 1000" in quality.budget_statement(quality.SAFARI_INDUCTION_HEAD, recipe)
    assert quality.run_recipe(quality.SAFARI_INDUCTION_HEAD, quality.parse_args([]), "synthetic") == \
        quality.SAFARI_INDUCTION_HEAD  # the default: the order from the seed itself, as before
    train_set = induction_head(64, generator=torch.Generator().manual_seed(3))
    test_set = induction_head(16, generator=torch.Generator().manual_seed(4), loss_positions="answer")
    losses = {}
    for offset in (0, 1000, 0):
        figures = quality.train_fixed_set(_tiny_llama(), train_set, test_set,
                                          _tiny_recipe(epochs=1, batch_size=16, order_seed_offset=offset), 3e-3, seed=0)
        losses.setdefault(offset, []).append(figures["train_loss_by_epoch"][0])
    assert losses[0][0] == losses[0][1]  # the order is the seed's: a rerun repeats it
    assert losses[1000][0] != pytest.approx(losses[0][0], rel=1e-6)  # same weights and data, another order
    with pytest.raises(SystemExit):
        quality.parse_args(["--order_seed_offset", "-1"])


def _tiny_recipe(**overrides) -> quality.Recipe:
    fields = dict(source="test", train_examples=32, test_examples=16, epochs=30, batch_size=32, learning_rates=(3e-3,),
                  weight_decay=0.0, betas=(0.9, 0.999), schedule="linear_warmup", shuffle=True)
    return quality.Recipe(**{**fields, **overrides})


def _tiny_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A benchmark model at the synthetic tasks' scale (vocabulary 20, width 32, 2 layers), built after
    ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    shape = comparators.ModelShape(vocab_size=20, hidden_size=32, num_layers=2, num_heads=1, intermediate_size=64,
                                   max_length=31)
    return comparators.build_model(name, shape)


def _tiny_llama() -> torch.nn.Module:
    return _tiny_model("llama")


def test_loss_and_accuracy_on_scored_positions_equal_those_of_the_full_logits():
    from hamiltonian_transformer.data.synthetic import multi_query_associative_recall

    inputs, targets = multi_query_associative_recall(6, 64, 16, 2, generator=torch.Generator().manual_seed(0))
    shape = comparators.ModelShape(vocab_size=64, hidden_size=32, num_layers=2, num_heads=1, intermediate_size=64,
                                   max_length=16)
    for name in ("llama", "h3", "hamiltonian:symplectic_euler"):
        torch.manual_seed(0)
        model = comparators.build_model(name, shape).eval()
        logits = model(input_ids=inputs, use_cache=False).logits
        full = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        assert quality.causal_loss(model, inputs, targets).item() == pytest.approx(full.item(), rel=1e-5)
        scored = targets != -100
        accuracy = (logits.argmax(-1)[scored] == targets[scored]).float().mean().item()
        assert quality.evaluate_accuracy(model, inputs, targets, batch_size=4) == pytest.approx(accuracy)


def test_fixed_set_training_lowers_the_loss_and_scores_every_epoch():
    train_set = induction_head(32, generator=torch.Generator().manual_seed(3))
    test_set = induction_head(16, generator=torch.Generator().manual_seed(4), loss_positions="answer")
    figures = quality.train_fixed_set(_tiny_llama(), train_set, test_set, _tiny_recipe(), lr=3e-3, seed=0)
    assert figures["epochs"] == 30 and figures["steps"] == 30 and len(figures["accuracy_by_epoch"]) == 30
    assert figures["train_loss_by_epoch"][-1] < figures["train_loss_by_epoch"][0]
    assert figures["best_accuracy"] == max(figures["accuracy_by_epoch"]) and figures["seconds_per_step"] > 0


def test_fixed_set_training_drops_embeddings_only_while_training_and_removes_its_hook():
    train_set = induction_head(32, generator=torch.Generator().manual_seed(3))
    test_set = induction_head(16, generator=torch.Generator().manual_seed(4), loss_positions="answer")
    losses = {}
    for p in (0.0, 0.5):
        model = _tiny_llama()
        seen: list[bool] = []
        embeddings = model.get_input_embeddings()
        embeddings.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(module.training))
        torch.manual_seed(0)
        figures = quality.train_fixed_set(model, train_set, test_set, _tiny_recipe(epochs=2, embedding_dropout=p),
                                          lr=3e-3, seed=0)
        losses[p] = figures["train_loss_by_epoch"]
        assert len(model.get_input_embeddings()._forward_hooks) == 0  # the recipe's hook is gone after training
        assert seen == [True, False, True, False]  # train step, evaluation, per epoch
        model.eval()
        embedded = model.get_input_embeddings()(test_set[0])
        assert torch.equal(embedded, model.get_input_embeddings().weight[test_set[0]])  # no dropout left behind
    assert losses[0.5][0] != pytest.approx(losses[0.0][0], rel=1e-4)  # same data, init and order: only the dropout


def test_recall_models_build_each_model_with_the_recipe_attention_dropout(monkeypatch):
    built = []

    def record(model, train_set, test_set, recipe, lr, seed, on_epoch, checkpoint):
        built.append(model.config.attention_dropout)
        return {"accuracy": 0.5, "best_accuracy": 0.5, "seconds_per_step": 0.1}

    monkeypatch.setattr(quality, "train_fixed_set", record)
    shape = comparators.ModelShape(vocab_size=20, hidden_size=32, num_layers=2, num_heads=1, intermediate_size=64,
                                   max_length=31)
    recipe = _tiny_recipe(attention_dropout=0.25)
    quality.recall_models(["llama", "h3"], shape, [0], recipe, None, None, log=lambda message: None, label="t")
    assert built == [0.25, 0.25]


def test_recall_models_log_the_test_accuracy_of_every_sixteenth_of_the_epochs():
    train_set = induction_head(32, generator=torch.Generator().manual_seed(3))
    test_set = induction_head(16, generator=torch.Generator().manual_seed(4), loss_positions="answer")
    shape = comparators.ModelShape(vocab_size=20, hidden_size=32, num_layers=2, num_heads=1, intermediate_size=64,
                                   max_length=31)
    lines: list[str] = []
    results = quality.recall_models(["llama"], shape, [0], _tiny_recipe(epochs=2 * quality.PROGRESS_LINES + 1),
                                    train_set, test_set, log=lines.append, label="ih")
    progress = [line for line in lines if " epoch " in line]
    accuracies = results["llama"]["per_seed"][0]["accuracy_by_epoch"]
    losses = results["llama"]["per_seed"][0]["train_loss_by_epoch"]
    assert len(progress) == quality.PROGRESS_LINES and len(lines) == quality.PROGRESS_LINES + 1  # and the end
    for count, line in enumerate(progress, start=1):
        epoch = 2 * count
        assert line == (f"  ih lr 0.003 llama seed 0 epoch {epoch}/{2 * quality.PROGRESS_LINES + 1}: "
                        f"accuracy {accuracies[epoch - 1]:.4f}, training loss {losses[epoch - 1]:.4f}")


class _Killed(Exception):
    """Stands for a kill of the benchmark in the middle of a run."""


@pytest.mark.parametrize("name, fields", [
    ("llama", dict(schedule="linear_warmup", shuffle=True, decay_groups="safari")),
    ("h3:pure", dict(schedule="cosine_warmup_timm", min_lr_ratio=0.1, warmup_start_lr=1e-6, shuffle=True,
                     decay_groups="safari")),
    ("h3:pure", dict(schedule="cosine_per_epoch", shuffle=False, decay_groups="all")),
])
def test_fixed_set_training_killed_after_an_epoch_takes_up_from_its_checkpoint_to_the_uninterrupted_run(
        tmp_path, name, fields):
    train_set = induction_head(32, generator=torch.Generator().manual_seed(3))
    test_set = induction_head(16, generator=torch.Generator().manual_seed(4), loss_positions="answer")
    recipe = _tiny_recipe(epochs=5, batch_size=8, embedding_dropout=0.1, **fields)  # 4 steps an epoch, dropout draws
    whole_model = _tiny_model(name)
    whole = quality.train_fixed_set(whole_model, train_set, test_set, recipe, lr=3e-3, seed=0)

    def kill(epoch: int, accuracy: float, loss: float) -> None:
        if epoch == 2:
            raise _Killed

    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(_Killed):
        quality.train_fixed_set(_tiny_model(name), train_set, test_set, recipe, lr=3e-3, seed=0, on_epoch=kill,
                                checkpoint=checkpoint)
    model = _tiny_model(name, seed=1)  # another initialisation and global random state: the checkpoint restores both
    resumed = quality.train_fixed_set(model, train_set, test_set, recipe, lr=3e-3, seed=0, checkpoint=checkpoint)
    assert resumed["resumed_after_epochs"] == [2] and whole["resumed_after_epochs"] == []
    assert resumed["train_loss_by_epoch"] == whole["train_loss_by_epoch"]
    assert resumed["accuracy_by_epoch"] == whole["accuracy_by_epoch"] and resumed["steps"] == whole["steps"] == 20
    for (key, value), expected in zip(model.state_dict().items(), whole_model.state_dict().values(), strict=True):
        assert torch.equal(value, expected), key
    assert not checkpoint.with_name("checkpoint.pt.tmp").exists()  # renamed into place after every write


@pytest.mark.parametrize("name", ["llama", "h3:pure"])
def test_stream_training_killed_mid_run_takes_up_from_its_checkpoint_to_the_uninterrupted_run(tmp_path, name):
    blocks = torch.randint(0, 20, (40, 9), generator=torch.Generator().manual_seed(5))

    def stream(generator: torch.Generator, killed_at: int | None = None):
        drawn = []

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            drawn.append(1)
            if len(drawn) == killed_at:
                raise _Killed
            batch = blocks[torch.randint(0, len(blocks), (4,), generator=generator)]
            return batch[:, :-1], batch[:, 1:]

        return next_batch

    def train(model, generator, killed_at=None, checkpoint=None):
        with quality.embedding_dropout(model, 0.1):  # dropout draws from torch's RNG, which the checkpoint keeps
            return quality.train_on_stream(model, stream(generator, killed_at), 10, 3e-3, 0.1, checkpoint, generator,
                                           checkpoint_every=3)

    whole_model = _tiny_model(name)
    whole = train(whole_model, torch.Generator().manual_seed(0))
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(_Killed):  # in step 8, after the checkpoint of step 6
        train(_tiny_model(name), torch.Generator().manual_seed(0), killed_at=8, checkpoint=checkpoint)
    model = _tiny_model(name, seed=1)  # other weights, global RNG and batch generator: the checkpoint restores them
    resumed = train(model, torch.Generator().manual_seed(1), checkpoint=checkpoint)
    assert resumed["resumed_after_steps"] == [6] and whole["resumed_after_steps"] == []
    assert resumed["final_train_loss"] == whole["final_train_loss"]
    for (key, value), expected in zip(model.state_dict().items(), whole_model.state_dict().values(), strict=True):
        assert torch.equal(value, expected), key
    with pytest.raises(ValueError, match="needs the generator"):
        quality.train_on_stream(model, stream(torch.Generator()), 10, 3e-3, 0.1, checkpoint)


def test_quality_rerun_after_a_kill_reads_back_finished_runs_and_takes_up_the_killed_one(tmp_path, monkeypatch,
                                                                                          capsys):
    argv = ["--quick", "--sections", "synthetic", "--synthetic_tasks", "associative_recall", "--models",
            "llama,h3:pure", "--seeds", "0,1", "--budget_fraction", "0.02", "--synthetic_train_examples", "8",
            "--synthetic_test_examples", "8"]  # 4 epochs per run
    quality.main([*argv, "--output_dir", str(tmp_path / "whole")])
    whole = json.loads((tmp_path / "whole" / "quality.json").read_text())["synthetic"]["associative_recall"]
    evaluate, evaluations = quality.evaluate_accuracy, []

    def killed_in_the_seventh_epoch(*args, **kwargs):  # llama seed 1, its third epoch, before its checkpoint
        evaluations.append(1)
        if len(evaluations) == 7:
            raise _Killed
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(quality, "evaluate_accuracy", killed_in_the_seventh_epoch)
    with pytest.raises(_Killed):
        quality.main([*argv, "--output_dir", str(tmp_path / "killed")])
    monkeypatch.setattr(quality, "evaluate_accuracy", evaluate)
    runs = sorted((tmp_path / "killed" / "runs").iterdir())
    assert [run.name.split("-")[0] for run in runs] == ["associative_recall_lr_0.0005_llama_0",
                                                        "associative_recall_lr_0.0005_llama_1"]
    assert [(run / "result.json").exists() for run in runs] == [True, False]  # llama seed 1 was training
    assert [(run / "checkpoint.pt").exists() for run in runs] == [False, True]
    trained = []
    train = quality.train_fixed_set
    monkeypatch.setattr(quality, "train_fixed_set", lambda model, *args, **kwargs: trained.append(1) or
                        train(model, *args, **kwargs))
    capsys.readouterr()
    quality.main([*argv, "--output_dir", str(tmp_path / "killed")])
    log = capsys.readouterr().err
    assert len(trained) == 3  # llama seed 1 taken up, h3:pure's two seeds; llama seed 0 read back
    assert re.search(r"llama seed 0: accuracy \d\.\d{4} \(finished earlier: .*runs", log)
    assert re.search(r"llama seed 1: taking up the run from .*checkpoint\.pt", log)
    resumed = json.loads((tmp_path / "killed" / "quality.json").read_text())["synthetic"]["associative_recall"]
    for model in ("llama", "h3:pure"):
        for ours, theirs in zip(resumed["models"][model]["per_seed"], whole["models"][model]["per_seed"], strict=True):
            assert ours["accuracy_by_epoch"] == theirs["accuracy_by_epoch"]
            assert ours["train_loss_by_epoch"] == theirs["train_loss_by_epoch"]
            assert ours["resumed_after_epochs"] == ([2] if (model, ours["seed"]) == ("llama", 1) else [])
    assert not (tmp_path / "killed" / "runs").exists() and not (tmp_path / "whole" / "runs").exists()


def test_fixed_set_training_stops_early_once_the_threshold_is_passed():
    train_set = induction_head(32, generator=torch.Generator().manual_seed(3))
    test_set = induction_head(16, generator=torch.Generator().manual_seed(4), loss_positions="answer")
    recipe = _tiny_recipe(epochs=5, schedule="cosine_per_epoch", early_stop_accuracy=-1.0)  # any accuracy passes
    figures = quality.train_fixed_set(_tiny_llama(), train_set, test_set, recipe, lr=3e-3, seed=0)
    assert figures["epochs"] == 1 and figures["steps"] == 1


def test_listops_section_reports_not_run_without_the_finetune_script(monkeypatch, tmp_path):
    monkeypatch.setattr(quality, "FINETUNE_SCRIPT", quality.REPO_ROOT / "scripts" / "absent_script.py")
    args = quality.parse_args(["--quick", "--output_dir", str(tmp_path)])
    result = quality.listops_section(args, ["llama"], log=lambda message: None)
    assert result["status"] == "not run" and "absent_script.py" in result["reason"]


def test_quality_figures_show_a_spread_only_with_several_seeds():
    assert quality._figure({"accuracy": quality.summarize([0.5, 0.7])}, "accuracy", 3) == "0.600 ± 0.141 (n=2)"
    assert quality._figure({"accuracy": quality.summarize([0.5])}, "accuracy", 3) == "0.500 (n=1)"


def test_interleaved_rounds_alternate_the_order_and_time_only_after_warm_up():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    seconds = interleaved_train.interleaved_rounds(steps, rounds=3, warmup=1)
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c", "c", "b", "a"]
    assert all(len(values) == 3 for values in seconds.values())


def test_interleaved_train_times_every_model_each_round_and_reports_ratios():
    results = interleaved_train.main(["--models", "h3,llama", "--preset", "tiny", "--seq_len", "16", "--rounds", "2"])
    for name in ("h3", "llama"):
        figures = results["models"][name]
        assert len(figures["step_seconds"]) == 2 and figures["tokens_per_s"] > 0
    assert results["models"]["llama"]["vs_llama"] == 1.0
    with pytest.raises(SystemExit):
        interleaved_train.parse_args(["--rounds", "0"])


def test_attention_widths_times_each_width_and_the_unpadded_value_case():
    results = attention_widths.main(["--widths", "8,9,16", "--seq_len", "12", "--heads", "2", "--rounds", "2"])
    cases = results["cases"]
    assert list(cases) == ["8", "9", "16", "9 (values 8)"]
    assert (cases["9 (values 8)"]["query_key_width"], cases["9 (values 8)"]["value_width"]) == (9, 8)
    assert cases["8"]["vs_8"] == 1.0 and all(len(case["round_seconds"]) == 2 for case in cases.values())
    with pytest.raises(SystemExit):
        attention_widths.parse_args(["--widths", "0,8"])


def test_int_list_argument_types_for_seeds_and_lengths():
    import argparse

    assert comparators.int_list()("2,0,1") == [2, 0, 1]
    assert comparators.int_list(positive_sorted=True)("512,128") == [128, 512]
    with pytest.raises(argparse.ArgumentTypeError, match="positive integers"):
        comparators.int_list(positive_sorted=True)("128,0")
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        comparators.int_list()("1,x")


def test_interleaved_decode_times_every_model_each_round_from_the_same_prompt_cache():
    results = interleaved_decode.main(["--models", "hamiltonian:leapfrog,h3:pure,llama", "--preset", "tiny",
                                       "--prompt_len", "12", "--tokens", "3", "--rounds", "2"])
    for name in ("hamiltonian:leapfrog", "h3:pure", "llama"):
        figures = results["models"][name]
        assert len(figures["round_seconds"]) == 2 and figures["ms_per_token"] > 0
    assert results["models"]["llama"]["vs_llama"] == 1.0 and results["prompt_len"] == 12
    with pytest.raises(SystemExit):
        interleaved_decode.parse_args(["--tokens", "0"])


def test_dynamics_ablation_runs_each_variant_and_seed_in_its_own_process(capsys):
    summary = dynamics_ablation.main(["--task", "induction", "--steps", "2", "--seeds", "0,1", "--jobs", "2",
                                      "--variants", 'first={"dynamics": "mlp_velocity"}', "llama"])
    assert set(summary["variants"]) == {"first", "llama"}
    for entry in summary["variants"].values():
        assert set(entry["per_seed"]) == {"0", "1"}
        assert all(0.0 <= accuracy <= 1.0 for accuracy in entry["per_seed"].values())
    assert summary["variants"]["first"]["overrides"] == {"dynamics": "mlp_velocity"}


@pytest.mark.parametrize("text", ['x={"a": 1', "x", '={"a": 1}', "x=[1]"])
def test_dynamics_ablation_refuses_malformed_variants(text):
    with pytest.raises(SystemExit):
        dynamics_ablation.parse_args(["--variants", text])


@pytest.mark.parametrize("argv", [["--lr", "0"], ["--steps", "0"], ["--seeds", "a"], ["--jobs", "0"]])
def test_dynamics_ablation_refuses_bad_flags(argv):
    with pytest.raises(SystemExit):
        dynamics_ablation.parse_args(argv)


def _tiny_h3() -> torch.nn.Module:
    return _tiny_model("h3:pure")


def test_safari_decay_groups_spare_only_the_diagonal_ssms_dt_a_and_b():
    from hamiltonian_transformer.ssm import DiagonalSSM

    model = _tiny_h3()
    groups = quality.safari_parameter_groups(model, weight_decay=0.1, lr=5e-3)
    names = {id(param): name for name, param in model.named_parameters()}
    decayed, spared = ([names[id(param)] for param in group["params"]] for group in groups)
    assert (groups[0]["weight_decay"], groups[0]["lr"]) == (0.1, 5e-3)
    assert (groups[1]["weight_decay"], groups[1]["lr"]) == (0.0, 1e-3)  # safari's SSM lr: min(1e-3, lr)
    assert sorted(decayed + spared) == sorted(names.values())  # every parameter, once
    ssm_prefixes = [prefix for prefix, module in model.named_modules() if isinstance(module, DiagonalSSM)]
    assert len(ssm_prefixes) == 2
    assert sorted(spared) == sorted(f"{prefix}.{name}" for prefix in ssm_prefixes
                                    for name in ("log_dt", "log_neg_A_real", "A_imag", "B"))
    # what the family's groups spare and safari decays: the SSMs' C and D, norms and biases
    assert {f"{ssm_prefixes[0]}.C", f"{ssm_prefixes[0]}.D"} <= set(decayed)
    assert any("norm" in name for name in decayed)
    llama_groups = quality.safari_parameter_groups(_tiny_llama(), weight_decay=0.1, lr=5e-4)
    assert len(llama_groups) == 1 and llama_groups[0]["weight_decay"] == 0.1
    shift_b = _tiny_model("h3:pure:shift_b")
    spared_b = quality.safari_parameter_groups(shift_b, weight_decay=0.1, lr=5e-3)[1]["params"]
    assert {id(p) for p in spared_b} >= {id(layer.mixer.shift_ssm.B) for layer in shift_b.model.layers}
    zoology = quality.single_parameter_group(model, weight_decay=0.1, lr=5e-3)  # zoology/train.py
    assert len(zoology) == 1 and len(zoology[0]["params"]) == len(names) and zoology[0]["lr"] == 5e-3


def test_fixed_set_training_decays_the_recipes_groups():
    train_set = induction_head(32, generator=torch.Generator().manual_seed(3))
    test_set = induction_head(16, generator=torch.Generator().manual_seed(4), loss_positions="answer")
    norm_weights = {}
    for groups in ("family", "safari", "all"):
        model = _tiny_h3()
        recipe = _tiny_recipe(epochs=1, weight_decay=50.0, schedule="cosine_per_epoch", decay_groups=groups)
        quality.train_fixed_set(model, train_set, test_set, recipe, lr=1e-3, seed=0)
        norm_weights[groups] = model.model.norm.weight.detach().mean().item()  # 1 at initialisation
    # one step: Adam moves a weight by about lr; decoupled decay scales it by 1 - lr * wd = 0.95
    assert norm_weights["family"] > 0.99 and norm_weights["safari"] < 0.96 and norm_weights["all"] < 0.96


def test_recipe_names_an_unknown_decay_group_and_the_flag_overrides_the_recipes_groups():
    with pytest.raises(ValueError, match=r"decay_groups='none'.*\['all', 'family', 'safari'\]"):
        _tiny_recipe(decay_groups="none")
    default = quality.run_recipe(quality.SAFARI_ASSOCIATIVE_RECALL, quality.parse_args([]), "synthetic")
    assert default.decay_groups == quality.SAFARI_ASSOCIATIVE_RECALL.decay_groups
    for groups in ("family", "safari", "all"):
        args = quality.parse_args(["--decay_groups", groups])
        assert quality.run_recipe(quality.SAFARI_ASSOCIATIVE_RECALL, args, "synthetic").decay_groups == groups
    with pytest.raises(SystemExit):
        quality.parse_args(["--decay_groups", "none"])


# safari_equivalence.py and safari_train.py (the runs of safari's own code need a checkout of it: not in CI)

import safari_checkout  # noqa: E402
import safari_equivalence  # noqa: E402
import safari_train  # noqa: E402

# The parameter names of safari's SimpleLMHeadModel with its h3 layer (src/models/sequence/{simple_lm,h3}.py,
# ssm/ss_kernel_{diag,shift}.py), one block's and the model's own.
SAFARI_BLOCK = [
    "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
    "mlp.fc2.bias", "mixer.q_proj.weight", "mixer.q_proj.bias", "mixer.k_proj.weight", "mixer.k_proj.bias",
    "mixer.v_proj.weight", "mixer.v_proj.bias", "mixer.output_linear.weight", "mixer.output_linear.bias",
    "mixer.ssm_k_kernel.kernel.B", "mixer.ssm_k_kernel.kernel.C", "mixer.ssm_k_D", "mixer.kernel.kernel.C",
    "mixer.kernel.kernel.log_dt", "mixer.kernel.kernel.B", "mixer.kernel.kernel.inv_A_real",
    "mixer.kernel.kernel.A_imag", "mixer.D",
]


def test_safari_names_map_one_to_one_onto_the_parameters_of_the_model_compared_with_safari():
    shape = comparators.ModelShape(vocab_size=10, hidden_size=32, num_layers=2, num_heads=1, intermediate_size=128,
                                   max_length=22)
    ours = {name for name, _ in comparators.build_model(safari_equivalence.OUR_MODEL, shape).named_parameters()}
    safari = list(safari_equivalence.GLOBAL_NAMES) + [f"backbone.layers.{i}.{part}" for i in range(2)
                                                      for part in SAFARI_BLOCK]
    mapped = [safari_equivalence.our_name(name) for name in safari]
    assert len(set(mapped)) == len(mapped) and set(mapped) == ours
    assert safari_equivalence.our_name("backbone.layers.1.mixer.kernel.kernel.inv_A_real") == \
        "model.layers.1.mixer.diag_ssm.log_neg_A_real"
    with pytest.raises(KeyError, match="lm_head.bias"):
        safari_equivalence.our_name("lm_head.bias")


def test_initial_values_must_agree_in_distribution_not_only_in_mean_and_spread():
    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(8, 4096, generator=generator, dtype=torch.float64)
    other_normal = torch.randn(8, 4096, generator=generator, dtype=torch.float64)
    uniform = (torch.rand(8, 4096, generator=generator, dtype=torch.float64) - 0.5) * 12 ** 0.5  # mean 0, std 1
    assert safari_equivalence.compare_values(normal, other_normal)["ok"]
    flagged = safari_equivalence.compare_values(normal, uniform)
    gap, bound = flagged["gap"]
    assert not flagged["ok"] and gap > bound  # the mean and the spread agree: the gap alone flags it
    assert abs(flagged["our"][1] - 1.0) < 0.02


def test_entries_the_initialisation_fixes_must_be_the_same_entries_and_values_to_rounding():
    fixed = torch.arange(64, dtype=torch.float32).mul(torch.pi).double().expand(8, 64)
    rounded = torch.arange(64, dtype=torch.float64).mul(torch.pi).expand(8, 64)  # pi * n in float64: 1e-7 apart
    row = safari_equivalence.compare_values(fixed, rounded)
    assert row["ok"] and row["gap"] is None and row["note"].startswith("all fixed, to ")
    assert not safari_equivalence.compare_values(fixed, rounded * 1.001)["ok"]
    drawn = fixed + torch.randn(8, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    row = safari_equivalence.compare_values(fixed, drawn)
    assert not row["ok"] and row["note"] == "64 entries fixed in one model only"


def test_stood_in_modules_answer_imports_and_stochastic_depth_is_the_identity_at_zero_only():
    assert isinstance(safari_checkout.stochastic_depth(0.0, "row"), torch.nn.Identity)
    with pytest.raises(ValueError, match="p=0.1"):
        safari_checkout.stochastic_depth(0.1, "row")
    finders, modules = list(sys.meta_path), set(sys.modules)
    try:
        safari_checkout.stand_in(("not_installed_anywhere", "hydra"))
        from not_installed_anywhere.sub import decorator  # noqa: PLC0415

        def function():
            return 1

        assert decorator(function) is function  # a stood-in decorator keeps what it decorates
        import hydra  # noqa: PLC0415

        assert hydra.utils.get_method(path="math.sqrt")(4.0) == 2.0
    finally:
        sys.meta_path[:] = finders
        for name in set(sys.modules) - modules:
            del sys.modules[name]


def _lightning_csv(path, rows):
    columns = ["epoch", "step", "train/loss", safari_train.METRIC]
    with path.open("w") as file:
        file.write(",".join(columns) + "\n")
        for row in rows:
            file.write(",".join(str(row.get(column, "")) for column in columns) + "\n")


def test_safari_train_summary_takes_each_epochs_last_validation_accuracy(tmp_path):
    _lightning_csv(tmp_path / "metrics.csv", [
        {"epoch": 0, "step": 9, "train/loss": 2.3},  # a training row: no validation accuracy
        {"epoch": 0, "step": 156, safari_train.METRIC: 0.25},
        {"epoch": 1, "step": 313, safari_train.METRIC: 0.5},
        {"epoch": 2, "step": 470, safari_train.METRIC: 0.75},
        {"epoch": 2, "step": 470, safari_train.METRIC: 0.625},  # logged twice: the last counts
    ])
    summary = safari_train.summarize(tmp_path, "associative_recall", 1, "command", "commit", None)
    assert summary["accuracy_per_epoch"] == [0.25, 0.5, 0.625]
    assert (summary["last"], summary["best"], summary["best_epoch"]) == (0.625, 0.625, 3)
    assert json.loads((tmp_path / "summary.json").read_text())["seed"] == 1
    assert "**0.625**" in (tmp_path / "summary.md").read_text()
    assert "Versions not recorded" in (tmp_path / "summary.md").read_text()  # summarised from a log alone
    versions = {"torch": "2.13.0+cpu", "pytorch_lightning": "1.8.6"}
    safari_train.summarize(tmp_path, "associative_recall", 1, "command", "commit", 12.0, versions)
    assert json.loads((tmp_path / "summary.json").read_text())["versions"] == versions
    assert "Trained with torch 2.13.0+cpu, pytorch_lightning 1.8.6." in (tmp_path / "summary.md").read_text()


def test_safari_train_needs_an_output_folder_unless_it_only_writes_the_data(capsys):
    args = safari_train.parse_args(["--safari_dir", "s", "--task", "induction_head", "--write_data", "sets.pt"])
    assert args.write_data == Path("sets.pt") and args.output_dir is None
    with pytest.raises(SystemExit):
        safari_train.parse_args(["--safari_dir", "s", "--task", "induction_head"])
    assert "--output_dir is required (or --write_data FILE" in capsys.readouterr().err


def _safari_summary(folder, seed, accuracies):
    folder.mkdir()
    _lightning_csv(folder / "metrics.csv", [{"epoch": epoch, "step": epoch, safari_train.METRIC: accuracy}
                                            for epoch, accuracy in enumerate(accuracies)])
    safari_train.summarize(folder, "induction_head", seed, "command", "commit", None)
    return folder


def test_seed_table_gives_each_seed_the_mean_the_best_and_the_first_epoch_reaching_each_threshold(tmp_path):
    folders = [_safari_summary(tmp_path / "seed2", 2, [0.25, 0.75, 0.5]),
               _safari_summary(tmp_path / "seed0", 0, [0.5, 1.0, 1.0])]
    text = seed_table.main([*map(str, folders), "--thresholds", "0.5", "0.9"])
    row = next(line for line in text.splitlines() if line.startswith("| safari's own code"))
    spread = statistics.stdev([1.0, 0.5])
    assert row.split(" | ")[1:] == ["0, 2", "1.000 / 0.500", f"0.750 ± {spread:.3f} (n=2)", "1.000 / 0.750",
                                    "1 / 2, 2 / never |"]
    assert text.startswith("**induction_head**") and "first epoch reaching 0.5 / 0.9" in text


def test_seed_table_keeps_runs_on_other_sets_in_rows_of_their_own(tmp_path):
    def quality_run(name, **data):
        run = {"seed": 3, "accuracy_by_epoch": [0.5]}
        setting = {"models": {"h3:pure": {"per_seed": [run]}}, **data}
        (tmp_path / name).write_text(json.dumps({"synthetic": {"induction_head": setting}}))
        return str(tmp_path / name)

    text = seed_table.main([quality_run("a.json", data_seed=0), quality_run("b.json", data_seed=2),
                            quality_run("c.json", data_seed=None, data="sets.pt: safari's own"),
                            quality_run("d.json", data_seed=0, recipe={"order_seed_offset": 1000})])
    per_seed_table = text.split("\n\n")[1]  # after the task's name; the comparison of the rows follows
    rows = [line.split(" | ")[0] for line in per_seed_table.splitlines() if line.startswith("| this project")]
    assert rows == ["| this project (`h3:pure`, quality.py)", "| this project (`h3:pure`, quality.py, data seed 2)",
                    "| this project (`h3:pure`, quality.py, sets: safari's own)",
                    "| this project (`h3:pure`, quality.py, batch order from seed + 1000)"]


def test_fisher_exact_test_gives_the_lady_tasting_tea_its_textbook_p():
    # Fisher (1935): all 4 cups of each kind named right; the one-sided p is 1/70 and the table is symmetric
    assert seed_table.fisher_exact_two_sided(((4, 0), (0, 4))) == pytest.approx(2 / 70)
    assert seed_table.fisher_exact_two_sided(((2, 2), (2, 2))) == pytest.approx(1.0)
    # 5 of 6 against 2 of 6: the tables as extreme as it are k = 1, 2, 5, 6 of C(6, k) C(6, 7 - k) / C(12, 7)
    assert seed_table.fisher_exact_two_sided(((5, 1), (2, 4))) == pytest.approx((6 + 90 + 90 + 6) / 792)


def test_rank_sum_test_counts_the_splits_as_extreme_as_the_one_observed():
    # three against three, wholly separated: 2 of the C(6, 3) = 20 splits are as extreme (either way round)
    assert seed_table.rank_sum_two_sided([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / 20)
    assert seed_table.rank_sum_two_sided([4, 5, 6], [1, 2, 3]) == pytest.approx(2 / 20)
    # a seed that never reaches the threshold (inf) ranks last; the two nevers tie at rank 4.5. Of the C(5, 2) = 10
    # splits, {1, 2} (rank sum 3) and {4.5, 4.5} (9) lie 3 from the centre 6; every other within 1.5
    assert seed_table.rank_sum_two_sided([1, 2], [3, math.inf, math.inf]) == pytest.approx(2 / 10)
    assert seed_table.rank_sum_two_sided([1, math.inf], [2, math.inf]) == 1.0
    # three nevers share rank 4: {4, 4} (sum 8, three ways) and {1, 2} (3) lie at least 2 from the centre 6
    assert seed_table.rank_sum_two_sided([math.inf, math.inf], [1, 2, math.inf]) == pytest.approx(4 / 10)
    assert seed_table.rank_sum_two_sided([7, 7], [7, 7, 7]) == 1.0


def test_seed_table_sets_each_row_against_the_first(tmp_path):
    first = [_safari_summary(tmp_path / f"safari{seed}", seed, [0.5, last])
             for seed, last in enumerate([1.0, 0.995, 0.6])]

    def quality_run(seed, accuracies):
        run = {"seed": seed, "accuracy_by_epoch": accuracies}
        path = tmp_path / f"ours{seed}.json"
        path.write_text(json.dumps({"synthetic": {"induction_head": {"models": {"h3:pure": {"per_seed": [run]}}}}}))
        return str(path)

    ours = [quality_run(0, [0.9, 0.2]), quality_run(1, [0.5, 0.992])]
    text = seed_table.main([*map(str, first), *ours, "--goal", "0.99"])
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "mean, each" not in line]
    reference, row = rows[-2], rows[-1]
    assert reference[2:] == ["2 of 3", *["(the first row)"] * 3, "(the first row) |"]
    difference = statistics.fmean([0.2, 0.992]) - statistics.fmean([1.0, 0.995, 0.6])
    error = math.sqrt(statistics.variance([1.0, 0.995, 0.6]) / 3 + statistics.variance([0.2, 0.992]) / 2)
    best = statistics.fmean([0.9, 0.992]), statistics.stdev([0.9, 0.992])
    assert row[1:] == [f"{best[0]:.3f} ± {best[1]:.3f} (n=2)", "1 of 2", f"{difference:+.3f}",
                       f"{error:.3f} ({abs(difference) / error:.1f} of them)",
                       f"{seed_table.fisher_exact_two_sided(((2, 1), (1, 1))):.2f}", "1.000 |"]  # all at epoch 1
    assert "seeds reaching 0.99" in text
    single = seed_table.main([str(first[0]), *ours])  # no spread is known for one seed
    assert "- (one seed)" in single


def test_seed_table_refuses_a_seed_twice_a_folder_without_a_run_and_malformed_flags(tmp_path, capsys):
    folder = _safari_summary(tmp_path / "seed0", 0, [0.5])
    with pytest.raises(SystemExit, match="seed 0 given twice"):
        seed_table.main([str(folder), str(folder / "summary.json")])
    with pytest.raises(SystemExit, match="holding one of summary.json, quality.json, found neither"):
        seed_table.main([str(tmp_path)])
    for flags, message in ((["--rename", "h3"], "--rename: 'h3' is not OLD=NEW"),
                           (["--thresholds", "0"], "--thresholds: 0.0 is not an accuracy in \\(0, 1\\]"),
                           (["--goal", "1.5"], "--goal: 1.5 is not an accuracy in \\(0, 1\\]")):
        with pytest.raises(SystemExit):
            seed_table.parse_args([str(folder), *flags])
        assert re.search(message, capsys.readouterr().err)


def test_safari_train_summary_refuses_a_log_without_validation_accuracy(tmp_path):
    _lightning_csv(tmp_path / "metrics.csv", [{"epoch": 0, "step": 9, "train/loss": 2.3}])
    with pytest.raises(SystemExit, match="has no val/accuracy_ignore_index"):
        safari_train.summarize(tmp_path, "induction_head", 0, "command", "commit", None)


import safari_steps  # noqa: E402


def _record_of_our_own_run(recipe):
    """A record in safari_steps' format (safari's parameter names) of quality.py's own steps on random batches: what
    the replay must reproduce."""
    safari_names = list(safari_equivalence.GLOBAL_NAMES) + [f"backbone.layers.{i}.{part}" for i in range(2)
                                                            for part in SAFARI_BLOCK]

    def as_safari(weights):
        return {name: weights[safari_equivalence.our_name(name)].unsqueeze(0)
                if name.endswith(safari_equivalence.LEADING_CHANNEL) else weights[safari_equivalence.our_name(name)]
                for name in safari_names}

    model = safari_equivalence.our_model(10, seed=3)
    initial = {name: param.detach().clone() for name, param in model.named_parameters()}
    optimizer = quality.recipe_optimizer(model, recipe, recipe.learning_rates[0])
    schedule, _ = quality.learning_rate_schedule(optimizer, recipe)
    to_safari = {safari_equivalence.our_name(name): name for name in safari_names}
    ours = {param: name for name, param in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    steps = []
    for step in range(recipe.steps):
        torch.manual_seed(100 + step)
        steps.append({"inputs": torch.randint(0, 10, (4, 21), generator=generator),
                      "targets": torch.randint(0, 10, (4, 21), generator=generator), "rng": torch.get_rng_state()})
    test_targets = torch.full((8, 21), -100)
    test_targets[:, -1] = torch.randint(0, 10, (8,), generator=generator)
    record = {
        "initial": as_safari(initial), "steps": steps, "accuracy": [(recipe.steps, None)],
        "test": (torch.randint(0, 10, (8, 21), generator=generator), test_targets),
        "groups": [{"names": [to_safari[ours[param]] for param in group["params"]],
                    **{field: group[field] for field in safari_steps.OPTIMIZER_FIELDS}}
                   for group in optimizer.param_groups],
        "schedule": safari_steps.scheduled_rates(schedule, recipe.steps),
    }
    run = safari_steps.replay(record, "associative_recall", recipe, recipe.steps)
    for step, loss, rates in zip(steps, run["losses"], zip(*(run["replayed"][ours[group["params"][0]]]["rates"]
                                                              for group in optimizer.param_groups))):
        step.update(loss=loss, rates=list(rates))
    record.update(final=as_safari(run["final"]), accuracy=[(recipe.steps, run["accuracy"][-1])])
    return record


def test_safari_steps_replay_reproduces_a_run_and_flags_its_controls():
    recipe = dataclasses.replace(quality.SAFARI_ASSOCIATIVE_RECALL, train_examples=8, batch_size=4, epochs=3)
    record = _record_of_our_own_run(recipe)
    same = safari_steps.compare(record, safari_steps.replay(record, "associative_recall", recipe, recipe.steps),
                                recipe.steps)
    assert same["same"], same["checks"]
    for change, flagged in [({"decay_groups": "family"}, "optimizer settings"),
                            ({"embedding_dropout": 0.0}, "loss at each replayed step"),
                            ({"schedule": "cosine_warmup_timm", "min_lr_ratio": 0.1}, "learning rate of every")]:
        control = dataclasses.replace(recipe, **change)
        outcome = safari_steps.compare(record, safari_steps.replay(record, "associative_recall", control,
                                                                   recipe.steps), recipe.steps)
        failed = [check for check, (_, ok) in outcome["checks"].items() if not ok]
        assert any(check.startswith(flagged) for check in failed), (change, failed)
    record["steps"][1]["rng"] = record["steps"][0]["rng"]  # another dropout mask at step 2
    outcome = safari_steps.compare(record, safari_steps.replay(record, "associative_recall", recipe, recipe.steps),
                                   recipe.steps)
    assert not outcome["checks"]["loss at each replayed step (largest relative difference)"][1]


def test_safari_steps_reads_each_schedules_own_formula():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    schedule, _ = quality.learning_rate_schedule(optimizer, quality.SAFARI_INDUCTION_HEAD)
    rates = safari_steps.scheduled_rates(schedule, 6281)
    assert rates[0] == [pytest.approx(1e-6)] and rates[6280] == [pytest.approx(4.8898772e-4)]

    class TimmLike:
        def _get_lr(self, step):
            return [step * 1e-3, 2.0]

    assert safari_steps.scheduled_rates(TimmLike(), 3) == [[0.0, 2.0], [1e-3, 2.0], [2e-3, 2.0]]
    with pytest.raises(TypeError, match="no formula for the scheduler StepLR"):
        safari_steps.scheduled_rates(torch.optim.lr_scheduler.StepLR(optimizer, 1), 3)


def test_safari_steps_refuses_zero_epochs(capsys):
    with pytest.raises(SystemExit):
        safari_steps.parse_args(["--safari_dir", "x", "--task", "induction_head", "--epochs", "0"])
    assert "--epochs must be at least 1, got 0" in capsys.readouterr().err
