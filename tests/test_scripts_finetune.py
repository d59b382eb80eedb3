"""scripts/finetune_classification.py: ListOps above the majority class, fine-tuning a causal-LM checkpoint, own data,
refusals, and two CPU ranks. Runs `main(argv)` in the test process, except the two-rank launch."""

from __future__ import annotations

import csv
import json
import weakref

import pytest
import torch
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from hamiltonian_transformer import PRESETS
from hamiltonian_transformer.data import listops_tokenizer, make_listops_splits
from hamiltonian_transformer.optimization import ParameterGroupTrainer
from tests.conftest import run_process_tree
from tests.hub_server import HubServer
from tests.script_helpers import (  # noqa: F401  (in_process_run is a fixture)
    MODEL_TYPES,
    SCRIPTS,
    in_process_run,
    load_script,
    save_tiny_causal_lm,
    two_cpu_ranks,
)

finetune = load_script("finetune_classification")

pytestmark = pytest.mark.usefixtures("in_process_run")


def argv(output_dir, **flags) -> list[str]:
    args = {"output_dir": output_dir, "save_strategy": "no", "listops_train_size": 1000,
            "listops_validation_size": 300, "listops_test_size": 50, "learning_rate": 3e-3, "num_train_epochs": 3}
    args.update(flags)
    return [item for key, value in args.items() if value is not None for item in (f"--{key}", str(value))]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_listops_validation_accuracy_beats_the_majority_class(tmp_path, model_type):
    output_dir = tmp_path / "listops"
    # Seeded, the tiny H3 is still at the majority class after 3 epochs; after 5 both models clear it (seeds 0, 1, 42).
    assert finetune.main(argv(output_dir, model_type=model_type, preset="tiny", num_train_epochs=5)) == 0
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert 0.0 < results["majority_class_accuracy"] < results["eval_accuracy"]
    assert 0.0 < results["eval_f1"] <= 1.0 and "test_accuracy" in results
    assert results["dataset"].startswith("ListOps")

    model = AutoModelForSequenceClassification.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert model.config.num_labels == 10 and model.config.model_type == model_type
    logits = model(**tokenizer(["[MAX 2 9 [MIN 4 7 ] 0 ]"], return_tensors="pt")).logits
    assert logits.shape == (1, 10)
    assert json.loads((output_dir / "training_args.json").read_text())["learning_rate"] == 3e-3


def test_a_pretrained_causal_lm_checkpoint_keeps_its_body_and_gets_a_new_head(tmp_path):
    checkpoint, output_dir = tmp_path / "pretrained", tmp_path / "classifier"
    save_tiny_causal_lm(checkpoint)
    # A learning rate that cannot move the weights: what is saved is what was loaded.
    assert finetune.main(argv(output_dir, model_name_or_path=checkpoint, max_steps=2, learning_rate=1e-12)) == 0
    pretrained, finetuned = load_file(checkpoint / "model.safetensors"), load_file(output_dir / "model.safetensors")
    torch.testing.assert_close(finetuned["model.embed_tokens.weight"], pretrained["model.embed_tokens.weight"])
    assert "score.weight" in finetuned and "lm_head.weight" not in finetuned
    assert AutoConfig.from_pretrained(output_dir).architectures == ["HamiltonianTransformerForSequenceClassification"]


def test_two_runs_with_the_same_seed_save_the_same_weights_whatever_torch_was_seeded_with(tmp_path):
    checkpoint = tmp_path / "pretrained"
    save_tiny_causal_lm(checkpoint)
    weights = []
    for run, torch_seed in enumerate((1, 2)):
        torch.manual_seed(torch_seed)  # each process starts from its own torch seed
        output_dir = tmp_path / f"run{run}"
        assert finetune.main(argv(output_dir, model_name_or_path=checkpoint, max_steps=2, listops_train_size=32,
                                  listops_validation_size=16, listops_test_size=0)) == 0
        weights.append(load_file(output_dir / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0, msg=name)


def test_final_folder_has_a_card_and_no_pickle_while_trainer_checkpoints_stay_in_subfolders(tmp_path):
    output_dir = tmp_path / "classifier"
    assert finetune.main(argv(output_dir, model_type="h3", preset="tiny", max_steps=2, save_strategy="steps",
                              save_steps=2, listops_train_size=32, listops_validation_size=16,
                              listops_test_size=0)) == 0
    top_level = {path.name for path in output_dir.iterdir() if path.is_file()}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= top_level
    assert not [name for name in top_level if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert (output_dir / "checkpoint-2" / "training_args.bin").is_file()  # Trainer's, for resuming
    recorded = json.loads((output_dir / "training_args.json").read_text())
    assert (recorded["steps"], recorded["max_steps"], recorded["stop_reason"]) == (2, 2, None)
    assert "Training ran all 2 planned optimizer steps." in " ".join((output_dir / "README.md").read_text().split())


class _Killed(Exception):
    """Stands for a kill of the run between two optimizer steps."""


def test_a_run_killed_after_a_checkpoint_resumes_from_latest_to_the_uninterrupted_weights(tmp_path, monkeypatch,
                                                                                          capsys):
    # Dropout makes the result depend on the restored RNG state, not only on weights, optimizer and data position.
    flags = dict(model_type="h3", preset="tiny", max_steps=6, save_strategy="steps", save_steps=3,
                 per_device_train_batch_size=8, listops_train_size=64, listops_validation_size=16,
                 listops_test_size=0, config_overrides="hidden_dropout=0.1,embedding_dropout=0.1")
    assert finetune.main(argv(tmp_path / "uninterrupted", **flags)) == 0
    step, steps = ParameterGroupTrainer.training_step, []

    def counted_and_killed_in_the_fifth_step(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 5:
            raise _Killed
        return step(self, *args, **kwargs)

    monkeypatch.setattr(ParameterGroupTrainer, "training_step", counted_and_killed_in_the_fifth_step)
    with pytest.raises(_Killed):
        finetune.main(argv(tmp_path / "killed", **flags))
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    capsys.readouterr()
    steps.clear()
    assert finetune.main(argv(tmp_path / "killed", resume_from_checkpoint="latest", **flags)) == 0
    assert f"resuming from {tmp_path / 'killed' / 'checkpoint-3'}" in capsys.readouterr().out
    assert len(steps) == 3  # steps 4-6: the first three came back with the checkpoint
    expected = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=name)


def test_time_cap_stops_training_and_the_run_records_it_as_cut_short(tmp_path, capsys):
    output_dir = tmp_path / "capped"
    assert finetune.main(argv(output_dir, model_type="h3", preset="tiny", max_steps=5, max_train_minutes=1e-9,
                              listops_train_size=32, listops_validation_size=16, listops_test_size=0)) == 0
    assert "stopped at step 1 of 5: --max_train_minutes 1e-09 reached" in capsys.readouterr().out
    recorded = json.loads((output_dir / "training_args.json").read_text())
    assert (recorded["steps"], recorded["max_steps"]) == (1, 5) and "max_train_minutes" in recorded["stop_reason"]
    assert "**Training was cut short**: 1 of the 5 planned" in (output_dir / "README.md").read_text()


def write_csv(path, rows) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_own_csv_data_with_string_labels(tmp_path):
    rows = [{"sentence": f"this is {word} number {i}", "sentiment": label}
            for i in range(40) for word, label in (("good", "pos"), ("bad", "neg"))]
    train = write_csv(tmp_path / "train.csv", rows)
    output_dir = tmp_path / "own"
    assert finetune.main(argv(output_dir, model_type="h3", preset="tiny", train_file=train, text_column="sentence",
                              label_column="sentiment", vocab_size=300, max_steps=3)) == 0
    config = AutoConfig.from_pretrained(output_dir)
    assert config.id2label == {0: "neg", 1: "pos"}
    assert json.loads((output_dir / "eval_results.json").read_text())["dataset"] == "local files train.csv"


@pytest.mark.parametrize("case, message", [
    ("missing label column", "column(s) ['label'] not found in the train split"),
    ("checkpoint and preset", "--model_name_or_path loads a checkpoint as it is"),
    ("unknown preset", "--preset 'huge' is not a preset of hamiltonian_transformer"),
    ("bf16 on CPU", "bf16"),
    ("sequence longer than the model", "above the model's limit"),
])
def test_refuses_bad_setups_with_one_readable_line(tmp_path, capsys, case, message):
    flags = {
        "missing label column": dict(train_file=write_csv(tmp_path / "t.csv", [{"text": "a b", "y": 1}] * 4),
                                     model_type="h3", preset="tiny"),
        "checkpoint and preset": dict(model_name_or_path=tmp_path, preset="tiny"),
        "unknown preset": dict(preset="huge"),
        "bf16 on CPU": dict(preset="tiny", bf16=True),
        "sequence longer than the model": dict(preset="tiny", max_seq_length=10_000),
    }[case]
    assert finetune.main(argv(tmp_path / "out", **flags)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("finetune_classification.py: error: ") and message in last_line


def test_memory_is_pinned_by_default_only_for_an_accelerator_and_always_when_asked(tmp_path, monkeypatch):
    for available in (False, True):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda available=available: available)
        assert finetune.parse_args(argv(tmp_path / "out"))[2].dataloader_pin_memory is available
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    assert finetune.parse_args(argv(tmp_path / "out", dataloader_pin_memory=True))[2].dataloader_pin_memory is True


def test_a_new_models_config_carries_the_tokenizers_special_tokens(tmp_path):
    # Otherwise Trainer aligns them itself at the start of training, with a warning.
    model_args, data_args, training_args = finetune.parse_args(argv(tmp_path / "out", preset="tiny"))
    run = finetune.setup(model_args, data_args, training_args)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(run.model.config, name) == getattr(run.tokenizer, name), name
    assert run.tokenizer.eos_token_id is not None


def test_the_ddp_model_is_freed_before_the_trainer_ends_the_process_group(tmp_path):
    # The other order can deadlock at exit: pretrain.py's end_training says why (tests/test_scripts_pretrain.py checks
    # it there). Checked on a one-process gloo group, with Trainer holding a DDP model as it does on several processes.
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        config = AutoConfig.for_model("h3", **{**PRESETS["h3"]["tiny"], "vocab_size": 64, "num_labels": 2})
        trainer = Trainer(model=AutoModelForSequenceClassification.from_config(config),
                          args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True))
        ddp = trainer.accelerator.prepare_model(DistributedDataParallel(trainer.model))
        trainer.model_wrapped, ddp_alive = ddp, weakref.ref(ddp)
        del ddp
        freed_when_ended = []
        trainer.end = lambda: freed_when_ended.append(ddp_alive() is None)
        finetune.end_training(trainer)
        assert freed_when_ended == [True]
    finally:
        torch.distributed.destroy_process_group()


def test_two_cpu_ranks_train_together_print_once_and_push_once(tmp_path):
    output_dir, token = tmp_path / "ddp", "hf_alice_test_token"
    launch, env = two_cpu_ranks(tmp_path / "hf_home")
    env = {key: value for key, value in env.items() if key != "HF_HUB_OFFLINE"}
    # 64 training sequences, 4 steps of 4 per rank: with both ranks each step takes 8, and training ends at epoch 0.5.
    flags = argv(output_dir, preset="tiny", max_steps=4, per_device_train_batch_size=4, listops_train_size=64,
                 listops_validation_size=16, listops_test_size=0, report_to="none", push_to_hub=True,
                 hub_model_id="alice/listops-ddp")
    with HubServer(tokens={token: "alice"}) as hub:
        env |= {"HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        result = run_process_tree([*launch, str(SCRIPTS / "finetune_classification.py"), *flags], timeout=300,
                                  env=env)
        assert result.returncode == 0, result.stderr[-4000:]
        # One upload, from the main process: a second rank's would add a commit (or race the first).
        assert len(hub.commit_messages("alice/listops-ddp")) == 2  # the repository's initial commit, then ours
        assert "model.safetensors" in hub.files("alice/listops-ddp")

    assert result.stdout.count("validation accuracy") == 1
    assert "PAD/BOS/EOS" not in result.stderr
    # Every parameter gets a gradient: DistributedDataParallel is not told to look for ones that do not (Trainer's
    # default), which would walk the autograd graph after every step and warn.
    assert "find_unused_parameters=True" not in result.stderr
    assert "pin_memory" not in result.stderr  # nothing to pin for without an accelerator
    recorded = json.loads((output_dir / "training_args.json").read_text())
    assert (recorded["num_processes"], recorded["steps"]) == (2, 4)
    train_split = make_listops_splits(64, 16, 0, min_length=10, max_length=60, seed=0)["train"]
    tokens = sum(len(ids) for ids in listops_tokenizer()(list(train_split["text"]))["input_ids"])
    assert json.loads((output_dir / "eval_results.json").read_text())["train_tokens"] == round(tokens * 0.5)
    assert AutoModelForSequenceClassification.from_pretrained(output_dir).config.num_labels == 10
