"""The main job: pretrain a small Hamiltonian Transformer and a small H3, sample from both, fine-tune on ListOps.

    python scripts/main_job.py --output_dir outputs/main_job

Offline, on CPU, in about 6-7 minutes on an idle 2-core machine (longer on a busy one, with the same figures). Each
stage is one of the user-facing scripts, run as a child process with the command printed first, so any stage can be
re-run or scaled up by hand:

1. scripts/pretrain.py twice, at the same time (one thread each, which fills a 2-core CPU without oversubscribing
   it), on the embedded Python-standard-library corpus: a 4-layer, width-256 version of the `small` preset of each
   architecture, a byte-level BPE of 4096 tokens, blocks of 128 tokens, --pretrain_steps optimizer steps.
   Validation perplexity is printed for both.
2. scripts/generate.py: a sampled continuation of a Python prompt from each model.
3. scripts/finetune_classification.py: the pretrained Hamiltonian Transformer fine-tuned on generated ListOps
   (10 classes) for --finetune_epochs epochs, validation accuracy printed next to the majority-class rate.

Every stage trains a fixed number of steps, seeded, one thread per process: every run on the same kind of machine
prints the same figures however busy it is. There is no time limit by default; --pretrain_minutes and
--finetune_minutes are opt-in caps for time-boxed runs. A stage that a cap stops before its planned steps is reported
as cut short (which stage, steps done of steps planned, and why) after that stage, in the final summary and in
`summary.json` (`cut_short`), and in the model card of its folder; its figures are then not those of the full run.

Everything lands under --output_dir: `hamiltonian_transformer/`, `h3/` and `listops/` are Hub-ready folders (weights
as safetensors, config, tokenizer, modelling code for `trust_remote_code=True`, run metadata and a model card
`README.md`; no pickle), ready for `python scripts/push_to_hub.py outputs/main_job/h3 your-user/h3-small`; each
child's full output is in `logs/` (kept out of the model folders so that it is not uploaded with them);
`summary.json` gathers the numbers, the steps of every stage and the samples.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hamiltonian_transformer.run_outputs import RunProgress

SCRIPTS = Path(__file__).resolve().parent
# The `small` preset at a width and depth that learns visibly in a few CPU minutes (about 4M parameters with the
# 4096-token vocabulary; the preset itself is 25M). `--preset tiny` (a smoke test of the whole job) takes the preset
# as it is.
SIZE = "hidden_size=256,num_hidden_layers=4,num_attention_heads=4,intermediate_size=1024"
MODELS = {
    "hamiltonian_transformer": SIZE,
    "h3": SIZE + ",attn_layer_idx=[1]",
}
PROMPT = "def __init__(self"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/main_job"))
    parser.add_argument("--pretrain_steps", type=int, default=450, help="optimizer steps of each pretraining run")
    parser.add_argument("--pretrain_minutes", type=float, default=None,
                        help="opt-in cap on each pretraining run's training time (default: none); a run it stops "
                             "before --pretrain_steps is reported as cut short")
    parser.add_argument("--finetune_epochs", type=float, default=3.0, help="ListOps epochs")
    parser.add_argument("--finetune_minutes", type=float, default=None,
                        help="opt-in cap on the ListOps training time (default: none); reported like the above")
    parser.add_argument("--listops_train_size", type=int, default=2000)
    parser.add_argument("--preset", default="small", choices=["small", "tiny"],
                        help="small: the job as documented; tiny: the same stages on tiny models (a smoke test)")
    parser.add_argument("--max_train_chars", type=int, default=3_000_000,
                        help="characters of the embedded corpus to pretrain on")
    args = parser.parse_args(argv)
    for name in ("pretrain_steps", "listops_train_size", "max_train_chars"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("pretrain_minutes", "finetune_epochs", "finetune_minutes"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    return args


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # One thread per child whatever the caller's setting: the figures depend on the thread count (it changes the order
    # of floating-point sums), so they reproduce only at a fixed one.
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the network
    return env


def log_file(args: argparse.Namespace, stage: str) -> Path:
    return args.output_dir / "logs" / f"{stage}.log"


def start(script: str, args: list[str], log_path: Path) -> subprocess.Popen:
    command = [sys.executable, str(SCRIPTS / script), *args]
    print(f"$ {shlex.join(command)}\n  (output: {log_path})", flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=child_env())


def wait(process: subprocess.Popen, log_path: Path) -> None:
    if process.wait() != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        sys.exit(f"main_job: {Path(process.args[1]).name} failed (exit {process.returncode}); end of {log_path}:\n"
                 f"{tail}")


def last_training_record(folder: Path) -> dict | None:
    from hamiltonian_transformer.run_outputs import TRAINING_LOG_FILE

    log = folder / TRAINING_LOG_FILE
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    losses = [record for record in records if "loss" in record]
    return losses[-1] if losses else None


def stage_progress(folder: Path) -> RunProgress:
    """Steps done and planned by the training run that wrote ``folder`` (its training_args.json)."""
    from hamiltonian_transformer.run_outputs import TRAINING_ARGS_FILE, RunProgress

    progress = RunProgress.from_metadata(json.loads((folder / TRAINING_ARGS_FILE).read_text()))
    if progress is None:
        sys.exit(f"main_job: {folder / TRAINING_ARGS_FILE} does not record the steps of its run")
    return progress


def print_changes(running: Callable[[], bool], status: Callable[[], str], interval_s: float = 15.0) -> None:
    """Every ``interval_s`` while ``running()``, print ``status()``, but only when it differs from the last line
    printed (a busy machine can go several intervals without a logged step)."""
    last = None
    while running():
        time.sleep(interval_s)
        line = status()
        if line != last:
            print(line, flush=True)
            last = line


def pretraining_status(args: argparse.Namespace, model_types) -> str:
    """One line: the last logged step of each pretraining run."""
    status = []
    for model_type in model_types:
        record = last_training_record(args.output_dir / model_type)
        status.append(f"{model_type}: " + ("preparing data" if record is None else
                                           f"step {record['step']}/{args.pretrain_steps} loss {record['loss']:.3f} "
                                           f"({record['tokens_per_second']:.0f} tokens/s)"))
    return "  " + " | ".join(status)


def pretrain_both(args: argparse.Namespace) -> dict[str, dict]:
    from hamiltonian_transformer.run_outputs import EVAL_RESULTS_FILE, TRAINING_LOG_FILE

    processes = {}
    for model_type, size in MODELS.items():
        folder = args.output_dir / model_type
        size_flags = ["--config_overrides", size] if args.preset == "small" else []
        pretrain_args = [
            "--model_type", model_type, "--preset", args.preset, *size_flags,
            "--vocab_size", "4096", "--seq_len", "128", "--max_train_chars", str(args.max_train_chars),
            "--max_eval_samples", "128",
            "--per_device_train_batch_size", "16", "--learning_rate", "1e-3", "--warmup_steps", "30",
            "--max_steps", str(args.pretrain_steps), "--logging_steps", "10",
            "--eval_steps", str(max(1, args.pretrain_steps // 2)), "--output_dir", str(folder),
            *time_limit_flags(args.pretrain_minutes),
        ]
        processes[model_type] = start("pretrain.py", pretrain_args, log_file(args, f"pretrain_{model_type}"))
    print_changes(lambda: any(process.poll() is None for process in processes.values()),
                  lambda: pretraining_status(args, processes))
    results = {}
    for model_type, process in processes.items():
        folder = args.output_dir / model_type
        wait(process, log_file(args, f"pretrain_{model_type}"))
        eval_results = json.loads((folder / EVAL_RESULTS_FILE).read_text())
        records = [json.loads(line) for line in (folder / TRAINING_LOG_FILE).read_text().splitlines()]
        first = next(record for record in records if "loss" in record)
        progress = stage_progress(folder)
        results[model_type] = {"folder": str(folder), "first_logged_train_loss": first["loss"], **eval_results,
                               **progress.as_metadata()}
        print(f"{model_type}: validation loss {eval_results['eval_loss']:.3f}, perplexity "
              f"{eval_results['perplexity']:.1f} after {progress.describe()}, {eval_results['train_tokens']:,} "
              f"training tokens (train loss {first['loss']:.3f} at step {first['step']})", flush=True)
    return results


def sample(args: argparse.Namespace, model_type: str) -> str:
    folder = args.output_dir / model_type
    log_path = log_file(args, f"generate_{model_type}")
    process = start("generate.py", [str(folder), "--prompt", PROMPT, "--max_new_tokens", "60", "--do_sample",
                                    "--temperature", "0.8", "--top_k", "40", "--no_stream"], log_path)
    wait(process, log_path)
    # generate.py prints the text last; loading messages come before it.
    text = log_path.read_text()
    return text[text.rindex(PROMPT):].rstrip()


def finetune_listops(args: argparse.Namespace) -> dict:
    from hamiltonian_transformer.run_outputs import EVAL_RESULTS_FILE

    folder = args.output_dir / "listops"
    finetune_args = [
        "--model_name_or_path", str(args.output_dir / "hamiltonian_transformer"), "--output_dir", str(folder),
        "--listops_train_size", str(args.listops_train_size), "--listops_validation_size", "500",
        "--listops_test_size", "500", "--listops_min_length", "10", "--listops_max_length", "40",
        "--num_train_epochs", str(args.finetune_epochs), "--learning_rate", "1e-3", "--warmup_steps", "20",
        "--per_device_train_batch_size", "32", "--save_strategy", "no", *time_limit_flags(args.finetune_minutes),
    ]
    log_path = log_file(args, "finetune_listops")
    process = start("finetune_classification.py", finetune_args, log_path)
    wait(process, log_path)
    results = json.loads((folder / EVAL_RESULTS_FILE).read_text())
    progress = stage_progress(folder)
    print(f"ListOps (fine-tuned hamiltonian_transformer): validation accuracy {results['eval_accuracy']:.3f}, "
          f"macro F1 {results['eval_f1']:.3f}; majority class {results['majority_class_accuracy']:.3f}; after "
          f"{progress.describe()}", flush=True)
    return {"folder": str(folder), **results, **progress.as_metadata()}


def time_limit_flags(minutes: float | None) -> list[str]:
    """The child script's opt-in time cap, or nothing (the default: train every planned step)."""
    return [] if minutes is None else ["--max_train_minutes", str(minutes)]


def cut_short_stages(summary: dict) -> list[str]:
    """One line per training stage that stopped before its planned steps: which stage, steps done of planned, why."""
    from hamiltonian_transformer.run_outputs import RunProgress

    stages = {f"pretraining {model_type}": result for model_type, result in summary["pretraining"].items()}
    stages["fine-tuning listops"] = summary["listops"]
    return [f"{name}: {progress.describe()}" for name, result in stages.items()
            if (progress := RunProgress.from_metadata(result)).cut_short]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"[1/3] pretraining both models ({args.pretrain_steps} steps each, in parallel)", flush=True)
    summary = {"pretraining": pretrain_both(args), "samples": {}}
    print("[2/3] sampling from each model", flush=True)
    for model_type in MODELS:
        summary["samples"][model_type] = sample(args, model_type)
        print(f"--- {model_type} ---\n{summary['samples'][model_type]}\n", flush=True)
    print("[3/3] fine-tuning the pretrained Hamiltonian Transformer on ListOps", flush=True)
    summary["listops"] = finetune_listops(args)
    summary["cut_short"] = cut_short_stages(summary)
    summary["minutes"] = round((time.monotonic() - started) / 60, 2)
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\nDone in {summary['minutes']:.1f} minutes. Results in {args.output_dir.resolve()}:")
    for model_type, result in summary["pretraining"].items():
        print(f"  {result['folder']:<45} {model_type} LM, validation perplexity {result['perplexity']:.1f}")
    print(f"  {summary['listops']['folder']:<45} ListOps classifier, validation accuracy "
          f"{summary['listops']['eval_accuracy']:.3f}")
    print(f"  {str(args.output_dir / 'summary.json'):<45} all numbers, steps and samples")
    if summary["cut_short"]:
        print("CUT SHORT: these stages stopped before their planned steps, so their figures are not those of the "
              "full run:")
        for line in summary["cut_short"]:
            print(f"  {line}")
    else:
        steps = ", ".join(f"{model_type} {result['steps']}" for model_type, result in summary["pretraining"].items())
        print(f"Every stage ran its planned steps (pretraining: {steps}; ListOps fine-tuning: "
              f"{summary['listops']['steps']}).")
    print("Each folder loads with AutoModelForCausalLM / AutoModelForSequenceClassification and AutoTokenizer, and "
          "has its model card (README.md); publish one with: python scripts/push_to_hub.py <folder> <user>/<name>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
