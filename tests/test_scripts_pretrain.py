"""scripts/pretrain.py end to end on tiny presets and a slice of the embedded corpus; the shipped Accelerate configs.

Real processes only where the behaviour needs them: two gloo ranks (DDP on CPU) and a run killed with SIGKILL.
Everything else calls `main(argv)` in the test process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import weakref
from pathlib import Path

import psutil
import pytest
import torch
from accelerate import Accelerator
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from hamiltonian_transformer import PRESETS, hub
from tests.conftest import PYTHON, run_process_tree, subprocess_env
from tests.script_helpers import (  # noqa: F401  (in_process_run is a fixture)
    MODEL_TYPES,
    SCRIPTS,
    in_process_run,
    load_script,
    reset_accelerate_state,
    two_cpu_ranks,
)

pretrain = load_script("pretrain")

# Float32 on CPU in one process: the same operations in the same order give the same bits, so kill-and-resume is held
# to (almost) exact equality. Accumulating 2 x 2 sequences instead of 4 sums the same gradient in another order.
RESUME_RTOL = 1e-6
ACCUMULATION_RTOL = 1e-5


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    """One `datasets` cache for the module: the corpus slice and its packing are built once."""
    return str(tmp_path_factory.mktemp("datasets_cache"))


def tiny_args(output_dir: Path, cache_dir: str, model_type: str = "hamiltonian_transformer", **flags) -> list[str]:
    args = {"model_type": model_type, "preset": "tiny", "output_dir": output_dir, "cache_dir": cache_dir,
            "max_train_chars": 20000, "seq_len": 32, "vocab_size": 300, "learning_rate": 3e-3,
            "per_device_train_batch_size": 4, "logging_steps": 1, "max_eval_samples": 16, "max_steps": 6}
    args.update(flags)
    argv = []
    for key, value in args.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def read_log(output_dir: Path) -> tuple[list[float], dict]:
    """(training loss of every logged step, the final evaluation record)."""
    records = [json.loads(line) for line in (output_dir / "training_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], [r for r in records if "eval_loss" in r][-1]


def test_two_cpu_ranks_train_together_and_save_a_folder_that_loads(tmp_path, cache_dir):
    output_dir = tmp_path / "ddp"
    launch, env = two_cpu_ranks(tmp_path / "hf_home")
    argv = tiny_args(output_dir, cache_dir, max_steps=8, checkpointing_steps=4)
    result = run_process_tree([*launch, str(SCRIPTS / "pretrain.py"), *argv], timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]

    losses, final = read_log(output_dir)
    # Gathered from both ranks at the end: each consumed its own 8 batches.
    assert final["batches_per_process"] == [8, 8]
    assert json.loads((output_dir / "training_args.json").read_text())["num_processes"] == 2
    assert losses[-1] < losses[0]
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (output_dir / "checkpoint-8").iterdir()}
    # Every parameter gets a gradient, and DistributedDataParallel is not told to look for ones that do not.
    assert "get no gradient" not in result.stdout and "find_unused_parameters=True" not in result.stderr

    eval_results = json.loads((output_dir / "eval_results.json").read_text())
    assert eval_results["eval_loss"] == pytest.approx(final["eval_loss"])
    assert eval_results["perplexity"] == pytest.approx(math.exp(final["eval_loss"]))
    assert eval_results["train_tokens"] == 8 * 2 * 4 * 32  # steps x ranks x batch x seq_len
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert model.config.vocab_size == len(tokenizer)
    assert (output_dir / "generation_config.json").is_file()
    ids = tokenizer("def main(", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_two_cpu_ranks_train_a_model_whose_last_force_gets_no_gradient(tmp_path, cache_dir):
    # The first design's dynamics with one literal Euler step per layer: the last layer's attention moves only the
    # momenta, which the head does not read. Untold, DistributedDataParallel fails at the second step.
    output_dir = tmp_path / "ddp"
    launch, env = two_cpu_ranks(tmp_path / "hf_home")
    argv = tiny_args(output_dir, cache_dir, max_steps=2, config_overrides="dynamics=mlp_velocity,integrator=euler")
    result = run_process_tree([*launch, str(SCRIPTS / "pretrain.py"), *argv], timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    last_force = ", ".join(f"model.layers.1.{name}" for name in (
        "force_norm.weight", "force_norm.bias", "attention.q_proj.weight", "attention.k_proj.weight",
        "attention.v_proj.weight", "attention.o_proj.weight"))
    assert result.stdout.count(f"6 parameters get no gradient ({last_force})") == 1  # printed by the main process
    assert read_log(output_dir)[1]["batches_per_process"] == [2, 2]


def test_a_launch_that_hangs_fails_showing_each_process_stack_and_leaves_none_running():
    # A parent that starts a child in a session of its own (as torch's launcher starts ranks), and both sleep.
    child = "import time; time.sleep(600)"
    parent = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}], "
              "start_new_session=True); print(p.pid, flush=True); time.sleep(600)")
    with pytest.raises(pytest.fail.Exception) as failure:
        run_process_tree([PYTHON, "-c", parent], timeout=5)
    message = str(failure.value)
    assert "did not exit within 5 s" in message and "of its 2 processes" in message
    # faulthandler's report from each process: where its main thread was (`-c` code is "<string>", line 1)
    assert message.count("Fatal Python error: Aborted") == 2
    assert message.count('File "<string>", line 1 in <module>') == 2
    child_pid = int(message.split("processes:\n")[1].split()[0])
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.usefixtures("in_process_run")
def test_the_ddp_model_is_freed_before_the_process_group_is_destroyed(monkeypatch):
    # The other order deadlocks now and then at exit (end_training's docstring): gloo's destructor, run from DDP's
    # reducer with the GIL held, joins a worker that waits for the GIL. Checked here on a one-process gloo group.
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        accelerator = Accelerator(cpu=True)
        ddp = accelerator.prepare_model(DistributedDataParallel(torch.nn.Linear(2, 2)))
        ddp_alive = weakref.ref(ddp)
        run = pretrain.PretrainingRun(accelerator=accelerator, tokenizer=None, model=ddp, optimizer=None,
                                      scheduler=None, train_loader=None, eval_loader=None, max_steps=1, resume_dir=None)
        del ddp
        freed_when_destroyed = []
        destroy = torch.distributed.destroy_process_group

        def recording_destroy(group=None):
            freed_when_destroyed.append(ddp_alive() is None)
            destroy(group)

        monkeypatch.setattr(torch.distributed, "destroy_process_group", recording_destroy)
        pretrain.end_training(accelerator, run)
        assert freed_when_destroyed == [True]
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.usefixtures("in_process_run")
def test_gradient_accumulation_gives_the_loss_curve_of_the_larger_batch(tmp_path, cache_dir, model_type):
    large = tmp_path / "batch4"
    assert pretrain.main(tiny_args(large, cache_dir, model_type, max_steps=4, per_device_train_batch_size=4,
                                   report_to="tensorboard")) == 0
    reset_accelerate_state()
    accumulated = tmp_path / "batch2x2"
    assert pretrain.main(tiny_args(accumulated, cache_dir, model_type, max_steps=4, per_device_train_batch_size=2,
                                   gradient_accumulation_steps=2)) == 0

    large_losses, large_final = read_log(large)
    accumulated_losses, accumulated_final = read_log(accumulated)
    assert len(large_losses) == len(accumulated_losses) == 4
    torch.testing.assert_close(torch.tensor(accumulated_losses), torch.tensor(large_losses), rtol=ACCUMULATION_RTOL,
                               atol=0)
    assert accumulated_final["eval_loss"] == pytest.approx(large_final["eval_loss"], rel=ACCUMULATION_RTOL)
    assert list((large / "runs").rglob("events.out.tfevents*")), "--report_to tensorboard wrote no event file"


@pytest.mark.usefixtures("in_process_run")
def test_activation_checkpointing_recomputes_the_same_training_without_a_deprecation(tmp_path, cache_dir, recwarn):
    stored = tmp_path / "stored"
    assert pretrain.main(tiny_args(stored, cache_dir, max_steps=3)) == 0
    reset_accelerate_state()
    recomputed = tmp_path / "recomputed"
    assert pretrain.main(tiny_args(recomputed, cache_dir, max_steps=3, activation_checkpointing=True)) == 0
    # transformers renamed gradient checkpointing (the old names warn): the script calls the new one, takes both flags
    assert not [w for w in recwarn if "checkpointing" in str(w.message)]
    assert read_log(recomputed)[0] == pytest.approx(read_log(stored)[0], rel=RESUME_RTOL)
    assert json.loads((recomputed / "training_args.json").read_text())["activation_checkpointing"] is True
    assert pretrain.parse_args(tiny_args(stored, cache_dir, gradient_checkpointing=True)).activation_checkpointing


@pytest.mark.usefixtures("in_process_run")
def test_sigkill_mid_run_then_resume_latest_reaches_the_uninterrupted_final_loss(tmp_path, cache_dir, capsys):
    # Dropout makes the result depend on the restored RNG state, not only on weights, optimizer and data position.
    flags = dict(max_steps=120, checkpointing_steps=20, eval_steps=30, gradient_accumulation_steps=2,
                 config_overrides="hidden_dropout=0.1,attention_dropout=0.1")
    reference = tmp_path / "uninterrupted"
    assert pretrain.main(tiny_args(reference, cache_dir, **flags)) == 0
    reset_accelerate_state()

    killed = tmp_path / "killed"
    process = subprocess.Popen([PYTHON, str(SCRIPTS / "pretrain.py"), *tiny_args(killed, cache_dir, **flags)],
                               env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (killed / "checkpoint-40").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{stderr[-3000:]}"
    assert not (killed / "model.safetensors").exists()

    capsys.readouterr()
    assert pretrain.main(tiny_args(killed, cache_dir, resume_from_checkpoint="latest", **flags)) == 0
    resumed_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resumed from")]
    assert resumed_line and int(resumed_line[0].rsplit(" ", 1)[1]) < flags["max_steps"]

    reference_losses, reference_final = read_log(reference)
    resumed_losses, resumed_final = read_log(killed)
    assert len(resumed_losses) == flags["max_steps"]
    torch.testing.assert_close(torch.tensor(resumed_losses), torch.tensor(reference_losses), rtol=RESUME_RTOL, atol=0)
    assert resumed_final["eval_loss"] == pytest.approx(reference_final["eval_loss"], rel=RESUME_RTOL)
    reference_weights, resumed_weights = load_file(reference / "model.safetensors"), load_file(
        killed / "model.safetensors")
    for name, tensor in reference_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=RESUME_RTOL, atol=RESUME_RTOL)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.usefixtures("in_process_run")
def test_resume_latest_skips_corrupted_and_partial_checkpoints(tmp_path, cache_dir, capsys, model_type):
    output_dir = tmp_path / "run"
    assert pretrain.main(tiny_args(output_dir, cache_dir, model_type, max_steps=8, checkpointing_steps=2)) == 0
    uninterrupted_losses, uninterrupted_final = read_log(output_dir)
    reset_accelerate_state()

    optimizer_file = output_dir / "checkpoint-8" / "optimizer.bin"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:100])  # truncated
    (output_dir / "checkpoint-6" / "checkpoint_complete.json").unlink()  # save never finished
    (output_dir / "checkpoint-10.tmp").mkdir()  # killed while saving
    capsys.readouterr()
    assert pretrain.main(tiny_args(output_dir, cache_dir, model_type, max_steps=8, checkpointing_steps=2,
                                   resume_from_checkpoint="latest")) == 0
    out = capsys.readouterr().out
    assert "skipping" in out and "checkpoint-10.tmp: a partial checkpoint" in out
    assert "checkpoint-8: corrupted or partial checkpoint, optimizer.bin has 100 bytes" in out
    assert "checkpoint-6: corrupted or partial checkpoint, it has no checkpoint_complete.json" in out
    assert f"resumed from {output_dir / 'checkpoint-4'} at step 4" in out

    resumed_losses, resumed_final = read_log(output_dir)
    torch.testing.assert_close(torch.tensor(resumed_losses), torch.tensor(uninterrupted_losses), rtol=RESUME_RTOL,
                               atol=0)
    assert resumed_final["eval_loss"] == pytest.approx(uninterrupted_final["eval_loss"], rel=RESUME_RTOL)


@pytest.mark.usefixtures("in_process_run")
def test_streaming_a_local_text_file_trains_and_saves(tmp_path, cache_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(Path(module.__file__).read_text() for module in (json, signal, subprocess)))
    output_dir = tmp_path / "streamed"
    argv = tiny_args(output_dir, cache_dir, max_steps=3, train_file=corpus, streaming=True, max_train_chars=None)
    assert pretrain.main(argv) == 0
    assert AutoConfig.from_pretrained(output_dir).model_type == "hamiltonian_transformer"
    assert json.loads((output_dir / "eval_results.json").read_text())["dataset"] == "local files corpus.txt"


@pytest.mark.usefixtures("in_process_run")
def test_time_cap_stops_at_the_first_logging_step_past_it_and_still_saves(tmp_path, cache_dir, capsys):
    output_dir = tmp_path / "capped"
    assert pretrain.main(tiny_args(output_dir, cache_dir, max_steps=50, logging_steps=3, max_train_minutes=1e-9)) == 0
    assert "stopped at step 3 of 50: --max_train_minutes" in capsys.readouterr().out
    losses, final = read_log(output_dir)
    assert len(losses) == 1 and final["step"] == 3
    recorded = json.loads((output_dir / "training_args.json").read_text())
    assert (recorded["steps"], recorded["max_steps"]) == (3, 50) and "max_train_minutes" in recorded["stop_reason"]
    assert "**Training was cut short**: 3 of the 50 planned" in (output_dir / "README.md").read_text()
    assert AutoModelForCausalLM.from_pretrained(output_dir).config.model_type == "hamiltonian_transformer"


@pytest.mark.usefixtures("in_process_run")
def test_push_to_hub_hands_the_final_folder_to_the_hub_module(tmp_path, cache_dir, capsys, monkeypatch):
    pushed = []

    def fake_push(folder, repo_id):
        # The folder is complete when the push starts: the hub module checks that it loads.
        pushed.append((Path(folder), repo_id, (Path(folder) / "eval_results.json").is_file()))
        raise hub.HubPushError("401 Unauthorized: the token cannot write to me/tiny")

    monkeypatch.setattr(hub, "push_checkpoint", fake_push)
    output_dir = tmp_path / "pushed"
    assert pretrain.main(tiny_args(output_dir, cache_dir, max_steps=2, push_to_hub=True, hub_model_id="me/tiny")) == 1
    assert pushed == [(output_dir, "me/tiny", True)]
    assert f"the model is saved in {output_dir} but the upload failed: 401" in capsys.readouterr().err


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


REFUSALS = {
    "unknown preset": (dict(preset="huge"), "--preset 'huge' is not a preset of hamiltonian_transformer"),
    "seq_len above the limit": (dict(seq_len=513), "--seq_len 513 is above the model's limit"),
    "bf16 on CPU": (dict(mixed_precision="bf16"), "--mixed_precision bf16 needs a GPU"),
    "unknown config key": (dict(config_overrides="hidden_sise=64"), "key 'hidden_sise' is not a field"),
    "bad config value": (dict(config_overrides="hidden_size=wide"), "hidden_size='wide'"),
    "no text column": ("no_text_column", "text column 'text' not found"),
    "empty corpus": ("empty_corpus", "is empty after dropping empty rows"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.usefixtures("in_process_run")
def test_refuses_bad_setups_with_one_readable_line(tmp_path, cache_dir, capsys, case):
    flags, message = REFUSALS[case]
    if flags == "no_text_column":
        train_file = write_jsonl(tmp_path / "train.jsonl", [{"content": "def f():\n    return 1\n"}] * 20)
        flags = dict(train_file=train_file, max_train_chars=None)
    elif flags == "empty_corpus":
        (tmp_path / "train.txt").write_text("\n   \n\n\t\n")
        flags = dict(train_file=tmp_path / "train.txt", max_train_chars=None)
    assert pretrain.main(tiny_args(tmp_path / "out", cache_dir, **flags)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("pretrain.py: error: ") and message in last_line


def test_unknown_model_type_is_an_argument_error(tmp_path, cache_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main(tiny_args(tmp_path, cache_dir, model_type="gpt2"))
    assert exit_info.value.code == 2
    assert "argument --model_type: invalid choice: 'gpt2'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# scripts/accelerate/*.yaml: parsed by accelerate's own loader, then planned as `accelerate launch` would.
# ---------------------------------------------------------------------------------------------------------------

CONFIGS = {
    "single_gpu.yaml": DistributedType.NO,
    "multi_gpu.yaml": DistributedType.MULTI_GPU,
    "fsdp.yaml": DistributedType.FSDP,
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    "multi_node.yaml": DistributedType.MULTI_GPU,
}


def test_every_shipped_accelerate_config_is_covered():
    assert {path.name for path in (SCRIPTS / "accelerate").glob("*.yaml")} == set(CONFIGS)


def plan_launch(config_name: str) -> tuple:
    """What `accelerate launch --config_file <config> scripts/pretrain.py` would run: (args, command, environment)."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(SCRIPTS / "accelerate" / config_name), str(SCRIPTS / "pretrain.py"), "--preset", "tiny"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        # Set by `launch_command` before it calls the DeepSpeed launcher.
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        command, env = prepare_deepspeed_cmd_env(args)
    elif args.multi_gpu or args.use_fsdp:
        command, env = None, prepare_multi_gpu_env(args)
    else:
        command, env = prepare_simple_launcher_cmd_env(args)
    return args, command, env


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_accelerate_config_parses_and_plans_a_launch(config_name):
    config = load_config_from_file(str(SCRIPTS / "accelerate" / config_name))
    assert config.distributed_type == CONFIGS[config_name]
    args, command, env = plan_launch(config_name)
    assert env["ACCELERATE_MIXED_PRECISION"] == config.mixed_precision == "bf16"
    if config_name == "single_gpu.yaml":
        assert command[1:] == [str(SCRIPTS / "pretrain.py"), "--preset", "tiny"]
    elif config_name == "deepspeed_zero2.yaml":
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
        assert env["ACCELERATE_GRADIENT_CLIPPING"] == "1.0"
    elif config_name == "multi_node.yaml":
        assert (args.nnodes, args.nproc_per_node, args.rdzv_endpoint) == ("2", "8", "10.0.0.1:29500")
    else:
        assert args.nproc_per_node == "8"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_fsdp_config_full_shards_and_wraps_each_block_of_the_family(model_type, monkeypatch):
    _, _, env = plan_launch("fsdp.yaml")
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FSDP2's FULL_SHARD
    config = AutoConfig.for_model(model_type, **PRESETS[model_type]["tiny"])
    model = AutoModelForCausalLM.from_config(config)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [module for module in model.modules() if policy(module)]
    block = {"hamiltonian_transformer": "HamiltonianLayer", "h3": "H3Block"}[model_type]
    assert [type(module).__name__ for module in wrapped] == [block] * config.num_hidden_layers
