"""Every example command in README.md and in the scripts' docstrings runs as written, at tiny size.

The commands are read from the documents themselves (indented or back-quoted lines that start with `python scripts/`,
`accelerate launch` or an environment assignment before them; a trailing backslash continues a command). Each runs
in a temporary folder (so `outputs/...` lands there), offline, with flags appended that shrink it (the last value of
a repeated flag wins): fewer steps, tiny presets, fewer examples. The main job runs first, since the other examples
use the folders it writes. The benchmark commands of the README record measurements that take minutes to hours; for
them the test checks that the benchmark script accepts the command's arguments. The README's seed_table.py commands
run in full over the committed runs, and the rows they print must be the README's.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
import torch

from tests.conftest import PYTHON, run_process_tree, subprocess_env
from tests.script_helpers import REPO_ROOT, SCRIPTS, load_script

DOCUMENTS = [REPO_ROOT / "README.md", *sorted(SCRIPTS.glob("*.py"))]
COMMAND_START = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:python scripts/|accelerate launch )")

# Appended to each example of a script: tiny sizes and step counts that keep every stage of it.
SHRINK = {
    "main_job.py": "--preset tiny --pretrain_steps 2 --max_train_chars 200000 --finetune_epochs 1 "
                   "--listops_train_size 64",
    "pretrain.py": "--preset tiny --max_steps 2 --max_train_chars 20000 --seq_len 32 --vocab_size 300 "
                   "--per_device_train_batch_size 2 --max_eval_samples 4 --logging_steps 1",
    "finetune_classification.py": "--max_steps 2 --listops_train_size 32 --listops_validation_size 16 "
                                  "--listops_test_size 0 --per_device_train_batch_size 8 --save_strategy no",
    "generate.py": "--max_new_tokens 4",
    "push_to_hub.py": "--dry_run",  # nothing is sent from a test
}
BENCHMARKS = {"speed.py", "quality.py", "interleaved_train.py", "attention_widths.py", "safari_equivalence.py",
              "safari_train.py", "safari_steps.py"}


def documented_commands() -> list[tuple[str, str]]:
    """(document name, command) for every example command, in document order."""
    found = []
    for document in DOCUMENTS:
        lines = document.read_text().splitlines()
        pending = ""
        for line in lines:
            text = line.strip().strip("`")
            if pending:
                pending += " " + text.removesuffix("\\").strip()
                if not text.endswith("\\"):
                    found.append((document.name, pending))
                    pending = ""
                continue
            for candidate in [*re.findall(r"`([^`]+)`", line), text]:
                candidate = candidate.split(" && ")[-1].strip()  # the README's "pip install ... && python ..."
                if COMMAND_START.match(candidate):
                    if candidate.endswith("\\"):
                        pending = candidate.removesuffix("\\").strip()
                    else:
                        found.append((document.name, candidate))
                    break
    return list(dict.fromkeys(found))


COMMANDS = documented_commands()


def script_of(command: str) -> str:
    return next(word for word in shlex.split(command) if word.endswith(".py")).split("/")[-1]


def test_the_documents_have_examples_of_every_script():
    documented = {script_of(command) for _, command in COMMANDS}
    assert set(SHRINK) <= documented and "speed.py" in documented


def run(command: str, cwd) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    env = subprocess_env()
    while "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if words[0] == "python":
        words[0] = PYTHON
    elif words[:2] == ["accelerate", "launch"]:
        words = [PYTHON, "-m", "accelerate.commands.launch", *words[2:]]
    words += shlex.split(SHRINK[script_of(command)])
    return run_process_tree(words, timeout=900, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with `scripts/` linked in, after the documented main job ran there at tiny size."""
    folder = tmp_path_factory.mktemp("examples")
    (folder / "scripts").symlink_to(SCRIPTS, target_is_directory=True)
    main_job = [command for _, command in COMMANDS if script_of(command) == "main_job.py"]
    assert main_job, "the README documents the main job"
    for command in main_job:
        result = run(command, folder)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return folder


@pytest.mark.parametrize("document, command", [
    pytest.param(document, command, id=f"{document}: {command[:70]}") for document, command in COMMANDS
    if script_of(command) in SHRINK and script_of(command) != "main_job.py"])
def test_documented_command_runs(workdir, document, command):
    if "multi_gpu.yaml" in command and torch.cuda.device_count() < 2:
        # One process per GPU cannot start without GPUs: check what can be checked here, that Accelerate reads the
        # documented config as multi-GPU data parallelism (the same file runs two gloo ranks in test_scripts_pretrain).
        from accelerate.commands.config.config_args import load_config_from_file

        config = load_config_from_file(str(REPO_ROOT / "scripts" / "accelerate" / "multi_gpu.yaml"))
        assert config.distributed_type.value == "MULTI_GPU" and config.num_machines == 1
        return
    result = run(command, workdir)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


SEED_TABLES = [command for document, command in COMMANDS
               if document == "README.md" and script_of(command) == "seed_table.py"]


def test_the_readme_builds_its_tables_over_seeds_with_seed_table():
    assert len(SEED_TABLES) >= 2  # associative recall and induction head, safari's own code beside ours


@pytest.mark.parametrize("command", SEED_TABLES)
def test_readme_tables_over_seeds_are_what_seed_table_prints_from_the_recorded_runs(command, monkeypatch):
    """The README's rows over seeds run one process each are seed_table.py's output for its documented command,
    with the shell's globs expanded over the committed runs."""
    monkeypatch.syspath_prepend(str(SCRIPTS / "bench"))
    seed_table = load_script("bench/seed_table")
    words = shlex.split(command)
    arguments = []
    for word in words[words.index(next(w for w in words if w.endswith(".py"))) + 1:]:
        if any(wildcard in word for wildcard in "*?["):
            matches = sorted(REPO_ROOT.glob(word))
            assert matches, f"{word} matches no recorded run"
            arguments += map(str, matches)
        else:
            arguments.append(word)
    rows = [line for line in seed_table.main(arguments).splitlines() if line.startswith("| ")]
    readme = (REPO_ROOT / "README.md").read_text().splitlines()
    assert rows and [row for row in rows if row not in readme] == []


def test_main_job_wrote_hub_ready_folders_with_a_card_and_no_pickle(workdir):
    from hamiltonian_transformer import hub

    for name in ("hamiltonian_transformer", "h3", "listops"):
        folder = workdir / "outputs" / "main_job" / name
        files = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
        assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "eval_results.json"} <= files
        assert not [file for file in files if file.endswith(hub.PICKLE_SUFFIXES)], f"pickles in {folder}"
        card = (folder / "README.md").read_text()
        assert "trust_remote_code=True" in card and "Training ran all" in card and "cut short" not in card
        plan = hub.plan_push(folder, f"user/{name}")  # what push_to_hub.py would upload
        try:
            assert not plan.notes and set(plan.files) <= files - {"README.md"}
        finally:
            plan.cleanup()


def test_main_job_ran_every_planned_step_without_a_time_limit(workdir):
    summary = json.loads((workdir / "outputs" / "main_job" / "summary.json").read_text())
    assert summary["cut_short"] == []
    for stage in [*summary["pretraining"].values(), summary["listops"]]:
        assert stage["steps"] == stage["max_steps"] and stage["stop_reason"] is None
        recorded = json.loads((workdir / stage["folder"] / "training_args.json").read_text())
        assert recorded["max_train_minutes"] is None  # the child ran without a time limit
    assert summary["pretraining"]["h3"]["max_steps"] == 2  # the documented command's --pretrain_steps, shrunk


@pytest.mark.parametrize("command", [command for _, command in COMMANDS if script_of(command) in BENCHMARKS])
def test_documented_benchmark_command_parses(command, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS / "bench"))
    module = load_script(f"bench/{script_of(command).removesuffix('.py')}")
    words = shlex.split(command)
    module.parse_args(words[words.index(next(w for w in words if w.endswith(".py"))) + 1:])
