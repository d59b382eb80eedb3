"""hamiltonian_transformer.run_outputs: perplexity and the run metadata files the Hub module reads."""

from __future__ import annotations

import json
import math

import pytest

from hamiltonian_transformer.run_outputs import (
    EVAL_RESULTS_FILE,
    TRAINING_ARGS_FILE,
    RunProgress,
    perplexity,
    write_run_metadata,
)


def test_perplexity_is_exp_of_the_loss_and_inf_past_float_range():
    assert perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity(1e4) == math.inf
    assert math.isnan(perplexity(math.nan))


def test_run_metadata_is_written_as_json_with_paths_as_strings(tmp_path):
    write_run_metadata(tmp_path, {"output_dir": tmp_path, "seed": 1}, {"eval_loss": 2.0})
    assert json.loads((tmp_path / TRAINING_ARGS_FILE).read_text()) == {"output_dir": str(tmp_path), "seed": 1}
    assert json.loads((tmp_path / EVAL_RESULTS_FILE).read_text()) == {"eval_loss": 2.0}


def test_run_progress_reports_a_cut_short_run_with_its_reason_and_a_full_one_without():
    cut = RunProgress(90, 450, "--max_train_minutes 7.0 reached")
    assert cut.cut_short and cut.describe() == "90 of 450 planned steps (cut short: --max_train_minutes 7.0 reached)"
    assert RunProgress.from_metadata({"seed": 1, **cut.as_metadata()}) == cut
    # A limit that falls due at the last step changed nothing: no reason is recorded.
    full = RunProgress(450, 450, "--max_train_minutes 7.0 reached")
    assert not full.cut_short and full.as_metadata() == {"steps": 450, "max_steps": 450, "stop_reason": None}
    assert full.describe() == "450 of 450 planned steps"


def test_run_progress_is_absent_from_metadata_that_does_not_record_it():
    assert RunProgress.from_metadata({"max_steps": -1}) is None  # TrainingArguments' "unset"
    assert RunProgress.from_metadata({"steps": 3}) is None
