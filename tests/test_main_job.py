"""scripts/main_job.py: no time limit unless asked for, and a stage that an opt-in limit cuts short is reported.

The default run (the README's command, at tiny size) runs in tests/test_documented_examples.py, which checks its
folders (Hub-ready, no pickle) and that every stage ran its planned steps. Here the job runs once more at tiny size
with limits so small that every stage stops at its first chance: the pretraining runs at their first logging step
(10 of 20), the fine-tuning after its first step (1 of 2).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from hamiltonian_transformer.run_outputs import TRAINING_ARGS_FILE
from tests.conftest import PYTHON, subprocess_env
from tests.script_helpers import SCRIPTS, load_script

main_job = load_script("main_job")
STAGES = {"pretraining hamiltonian_transformer": (10, 20), "pretraining h3": (10, 20), "fine-tuning listops": (1, 2)}


def test_no_stage_has_a_time_limit_by_default():
    args = main_job.parse_args([])
    assert args.pretrain_minutes is None and args.finetune_minutes is None
    assert main_job.time_limit_flags(None) == []


def test_only_stages_that_stopped_before_their_planned_steps_are_listed_as_cut_short():
    def stage(steps, max_steps, stop_reason=None):
        return {"steps": steps, "max_steps": max_steps, "stop_reason": stop_reason}

    summary = {"pretraining": {"hamiltonian_transformer": stage(450, 450),
                               "h3": stage(90, 450, "--max_train_minutes 7.0 reached")},
               "listops": stage(189, 189)}
    assert main_job.cut_short_stages(summary) == [
        "pretraining h3: 90 of 450 planned steps (cut short: --max_train_minutes 7.0 reached)"]
    summary["pretraining"]["h3"] = stage(450, 450)
    assert main_job.cut_short_stages(summary) == []


@pytest.fixture(scope="module")
def cut_short_run(tmp_path_factory):
    """(output folder, stdout) of a tiny main job whose opt-in time limits stop every stage early."""
    output_dir = tmp_path_factory.mktemp("main_job") / "out"
    command = [PYTHON, str(SCRIPTS / "main_job.py"), "--output_dir", str(output_dir), "--preset", "tiny",
               "--pretrain_steps", "20", "--max_train_chars", "100000", "--finetune_epochs", "1",
               "--listops_train_size", "64", "--pretrain_minutes", "1e-6", "--finetune_minutes", "1e-6"]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return output_dir, result.stdout


def test_summary_json_names_each_cut_short_stage_with_steps_done_of_planned(cut_short_run):
    output_dir, _ = cut_short_run
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["cut_short"] == [f"{stage}: {done} of {planned} planned steps (cut short: --max_train_minutes "
                                    f"1e-06 reached)" for stage, (done, planned) in STAGES.items()]
    for result in [*summary["pretraining"].values(), summary["listops"]]:
        assert result["steps"] < result["max_steps"] and "max_train_minutes" in result["stop_reason"]


def test_printed_summary_says_the_stages_were_cut_short(cut_short_run):
    _, stdout = cut_short_run
    end = stdout[stdout.index("\nDone in"):]
    assert "CUT SHORT" in end and "Every stage ran its planned steps" not in end
    for stage, (done, planned) in STAGES.items():
        assert f"{stage}: {done} of {planned} planned steps (cut short" in end
    assert "after 10 of 20 planned steps (cut short: --max_train_minutes 1e-06 reached)" in stdout


def test_each_cut_short_folder_records_it_and_its_card_says_so(cut_short_run):
    output_dir, _ = cut_short_run
    for name, (done, planned) in (("hamiltonian_transformer", (10, 20)), ("h3", (10, 20)), ("listops", (1, 2))):
        recorded = json.loads((output_dir / name / TRAINING_ARGS_FILE).read_text())
        assert (recorded["steps"], recorded["max_steps"]) == (done, planned)
        card = " ".join((output_dir / name / "README.md").read_text().split())
        assert f"**Training was cut short**: {done} of the {planned} planned optimizer steps ran" in card
