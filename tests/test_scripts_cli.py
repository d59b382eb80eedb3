"""Every script: `--help` answers without importing the libraries, and bad flags, missing files or folders, a
checkpoint of the wrong kind and a corrupted weights file each end in one line naming the flag, path or file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import PYTHON, subprocess_env
from tests.script_helpers import SCRIPTS, load_script, save_tiny_causal_lm

SCRIPT_NAMES = ["pretrain", "finetune_classification", "generate", "push_to_hub", "main_job"]
# transformers' TrainingArguments, which finetune_classification.py's parser is generated from, imports torch and
# accelerate.
HELP_IMPORTS = {"finetune_classification": {"torch", "accelerate"}}
HEAVY = ["torch", "hamiltonian_transformer", "datasets", "accelerate"]

# Runs scripts/<name>.py --help in this interpreter, then prints which heavy modules it imported.
HELP_PROBE = """
import runpy, sys
sys.argv = [{path!r}, "--help"]
try:
    runpy.run_path({path!r}, run_name="__main__")
except SystemExit as exit:
    code = exit.code
print("EXIT", code)
print("IMPORTED", *[name for name in {heavy!r} if name in sys.modules])
"""


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_help_answers_without_importing_the_libraries(name):
    probe = HELP_PROBE.format(path=str(SCRIPTS / f"{name}.py"), heavy=HEAVY)
    result = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    lines = result.stdout.strip().splitlines()
    assert "usage:" in result.stdout and lines[-2] == "EXIT 0", result.stderr
    imported = set(lines[-1].split()[1:])
    allowed = HELP_IMPORTS.get(name, set())
    assert imported <= allowed, f"--help of {name}.py imported {sorted(imported)}"


pretrain = load_script("pretrain")
finetune = load_script("finetune_classification")
generate = load_script("generate")
push_to_hub = load_script("push_to_hub")


def argument_error(capsys, parse, argv) -> str:
    """The one line `parser.error` prints for ``argv`` (exit code 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_finetune_refuses_max_steps_that_would_train_for_epochs_instead(tmp_path, capsys, steps):
    line = argument_error(capsys, finetune.parse_args, ["--output_dir", str(tmp_path), "--max_steps", steps])
    assert f"--max_steps must be at least 1 (or left unset to train --num_train_epochs), got {steps}" in line


def test_pretrain_refuses_max_steps_0_too(tmp_path, capsys):
    line = argument_error(capsys, pretrain.parse_args, ["--output_dir", str(tmp_path), "--max_steps", "0"])
    assert "--max_steps must be at least 1, got 0" in line


@pytest.mark.parametrize("script", ["pretrain", "finetune"])
@pytest.mark.parametrize("flag", ["train_file", "validation_file"])
def test_missing_data_file_is_refused_naming_the_flag_and_path(tmp_path, capsys, script, flag):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,0\n")
    missing = tmp_path / "nowhere" / "data.csv"
    files = {"train_file": missing} if flag == "train_file" else {"train_file": train, "validation_file": missing}
    argv = ["--output_dir", str(tmp_path / "out")] + [arg for key, path in files.items()
                                                      for arg in (f"--{key}", str(path))]
    parse = pretrain.parse_args if script == "pretrain" else finetune.parse_args
    assert argument_error(capsys, parse, argv).endswith(f"--{flag} {missing}: no such file")


def test_unknown_model_type_is_refused_at_parsing(tmp_path, capsys):
    line = argument_error(capsys, finetune.parse_args, ["--output_dir", str(tmp_path), "--model_type", "gpt2"])
    assert "argument --model_type: invalid choice: 'gpt2' (choose from hamiltonian_transformer, h3)" in line


@pytest.mark.parametrize("folder", ["outputs/main_job/hamiltonian", "./no_model_here", "{tmp}/missing"])
@pytest.mark.parametrize("script", ["generate", "finetune", "push_to_hub"])
def test_missing_model_folder_is_one_line_naming_the_path(tmp_path, capsys, script, folder):
    folder = folder.format(tmp=tmp_path)
    argv = {"generate": [folder],
            "finetune": ["--model_name_or_path", folder, "--output_dir", str(tmp_path / "out")],
            "push_to_hub": [folder, "me/model", "--dry_run"]}[script]
    parse = {"generate": generate.parse_args, "finetune": finetune.parse_args,
             "push_to_hub": push_to_hub.parse_args}[script]
    line = argument_error(capsys, parse, argv)
    assert str(Path(folder)) in line and ("no such model folder" in line or "no such folder" in line)
    assert "Repo id" not in line


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    """A tiny sequence-classification checkpoint, as finetune_classification.py leaves one."""
    lm = tmp_path_factory.mktemp("lm")
    save_tiny_causal_lm(lm)
    folder = tmp_path_factory.mktemp("classifier")
    AutoModelForSequenceClassification.from_pretrained(lm, num_labels=3).save_pretrained(folder)
    AutoTokenizer.from_pretrained(lm).save_pretrained(folder)
    return folder


def test_generate_refuses_a_classifier_naming_folder_and_architecture(classifier_folder, capsys):
    assert AutoConfig.from_pretrained(classifier_folder).architectures == [
        "HamiltonianTransformerForSequenceClassification"]
    assert generate.main([str(classifier_folder), "--max_new_tokens", "4"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (f"generate.py: error: {classifier_folder} holds a "
                                    "HamiltonianTransformerForSequenceClassification, not a causal language model")


def corrupt_header(folder):
    """Same-size bit rot in the safetensors header (the length prefix and the JSON after it)."""
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[20:40] = b"\xff" * 20
    weights.write_bytes(bytes(data))
    return weights


def test_generate_names_the_weights_file_that_does_not_read(tmp_path, capsys):
    save_tiny_causal_lm(tmp_path)
    weights = corrupt_header(tmp_path)
    capsys.readouterr()  # the save's progress bar
    assert generate.main([str(tmp_path), "--max_new_tokens", "4"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"generate.py: error: model_name_or_path {tmp_path}: the weights file {weights} cannot be "
                          "read")


def test_finetune_names_the_weights_file_that_does_not_read(tmp_path, capsys):
    folder = tmp_path / "lm"
    save_tiny_causal_lm(folder)
    weights = corrupt_header(folder)
    capsys.readouterr()
    argv = ["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "out"), "--listops_train_size", "16",
            "--listops_validation_size", "8", "--listops_test_size", "0", "--max_steps", "1"]
    assert finetune.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert f"the weights file {weights} cannot be read" in err.splitlines()[-1]


def main_job_status(tmp_path, capsys, statuses):
    """What main_job.print_changes prints while a fake run reports ``statuses`` one poll after another."""
    main_job = load_script("main_job")
    remaining = list(statuses)
    main_job.print_changes(lambda: bool(remaining), lambda: remaining.pop(0), interval_s=0)
    return capsys.readouterr().out.splitlines()


def test_main_job_prints_a_status_line_only_when_it_changed(tmp_path, capsys):
    lines = main_job_status(tmp_path, capsys, ["preparing data", "preparing data", "step 10", "step 10", "step 20"])
    assert lines == ["preparing data", "step 10", "step 20"]
