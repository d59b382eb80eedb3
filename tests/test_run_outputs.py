"""hamiltonian_transformer.run_outputs: perplexity and the run metadata files the Hub module reads."""

from __future__ import annotations

import json
import math

import pytest

from hamiltonian_transformer.run_outputs import EVAL_RESULTS_FILE, TRAINING_ARGS_FILE, perplexity, write_run_metadata


def test_perplexity_is_exp_of_the_loss_and_inf_past_float_range():
    assert perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity(1e4) == math.inf
    assert math.isnan(perplexity(math.nan))


def test_run_metadata_is_written_as_json_with_paths_as_strings(tmp_path):
    write_run_metadata(tmp_path, {"output_dir": tmp_path, "seed": 1}, {"eval_loss": 2.0})
    assert json.loads((tmp_path / TRAINING_ARGS_FILE).read_text()) == {"output_dir": str(tmp_path), "seed": 1}
    assert json.loads((tmp_path / EVAL_RESULTS_FILE).read_text()) == {"eval_loss": 2.0}
