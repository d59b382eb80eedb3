"""The Hamiltonian Transformer's dynamics against Llama on recall at an equal budget: the ablation behind its default.

    python scripts/bench/dynamics_ablation.py --task induction --seeds 0,1,2 --jobs 2
    python scripts/bench/dynamics_ablation.py --task mqar --seeds 0 --jobs 2
    python scripts/bench/dynamics_ablation.py --task induction --variants 'mlp_bias_off={"mlp_bias": false}'

Every (variant, seed) trains from scratch in a process of its own on one thread, ``--jobs`` of them at a time, so that
two fill a 2-core machine and a seed's figure does not depend on what runs beside it. Each variant is the Hamiltonian
Transformer (symplectic Euler) with `HamiltonianTransformerConfig` overrides, or ``llama`` (transformers' Llama of
matched parameter count, comparators.py). By default: the default config, the first design (``dynamics="mlp_velocity"``)
and Llama.

Recipe (quality.py's stream recipe, the one the issue's measurements used): fresh batches of 64 every step, AdamW
lr 3e-3, betas (0.9, 0.95), weight decay 0.1 on matrices, 10% linear warm-up then cosine decay, gradient clipping at 1,
loss on the answer positions only.

- induction: the H3 paper's induction head (safari's generator: vocabulary 20, 30 random tokens then the trigger),
  two layers of width 32 with 2 heads, ``--steps`` 1000 (where Llama reaches 1.0); accuracy on 2,000 test sequences.
- mqar: Zoology's MQAR at length 64 with 4 pairs, vocabulary 8192, two layers of width 64 with 4 heads, ``--steps``
  10000 (at 3000 Llama still sits at the floor of 0.25; at 10000 it reaches 0.998); accuracy over all queries of 2,000
  test sequences. (Zoology's own recipe is quality.py's mqar section.)

Language-model perplexity at 5M tokens, the third measurement of the ablation, is quality.py's lm section:
``python scripts/bench/quality.py --sections lm --models hamiltonian:symplectic_euler,llama``.
Prints one JSON line per run and a summary (mean, min, per-seed) per variant as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TASKS = ("induction", "mqar")
DEFAULT_VARIANTS = {"default": {}, "mlp_velocity": {"dynamics": "mlp_velocity"}, "llama": None}
DEFAULT_STEPS = {"induction": 1000, "mqar": 10000}
BATCH_SIZE = 64
TEST_EXAMPLES = 2000
TEST_SEED = 1_000_003  # the test set's generator seed, which no training stream uses


def parse_variant(text: str) -> tuple[str, dict | None]:
    """'name={"field": value}' -> (name, overrides); 'llama' -> ('llama', None)."""
    if text == "llama":
        return "llama", None
    name, sep, overrides = text.partition("=")
    try:
        parsed = json.loads(overrides) if sep else None
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"variant {text!r}: the overrides are not JSON ({error})") from None
    if not name or not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected NAME={{json object}} or llama")
    return name, parsed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, default="induction")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of model init and training data")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: 1000 induction, 10000 mqar)")
    parser.add_argument("--variants", type=parse_variant, nargs="+",
                        help='NAME={"config_field": value, ...} or llama (default: default, mlp_velocity, llama)')
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (quality.py's stream recipe: 3e-3)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: one run, as JSON {variant, overrides, seed}
    args = parser.parse_args(argv)
    # parsed here rather than with comparators.int_list: importing comparators imports torch, and --help stays light
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",") if seed]
    except ValueError:
        parser.error(f"--seeds expects comma-separated integers, got {args.seeds!r}")
    if not args.seeds:
        parser.error("--seeds needs at least one seed")
    args.steps = DEFAULT_STEPS[args.task] if args.steps is None else args.steps
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    for name in ("steps", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    args.variants = dict(args.variants) if args.variants else dict(DEFAULT_VARIANTS)
    return args


def run_one(task: str, steps: int, lr: float, overrides: dict | None, seed: int) -> dict:
    """Trains one model from scratch and returns its test accuracy (in this process, one thread)."""
    import torch
    from comparators import build_model
    from quality import _shape, evaluate_accuracy, train_on_stream

    from hamiltonian_transformer.data.synthetic import induction_head, multi_query_associative_recall

    torch.set_num_threads(1)
    if task == "induction":
        shape = _shape(vocab_size=20, width=32, layers=2, num_heads=2, max_length=31)

        def sample(n: int, generator: torch.Generator):
            return induction_head(n, 20, 30, generator, loss_positions="answer")
    else:
        shape = _shape(vocab_size=8192, width=64, layers=2, num_heads=4, max_length=64)

        def sample(n: int, generator: torch.Generator):
            return multi_query_associative_recall(n, 8192, 64, 4, generator)

    test = sample(TEST_EXAMPLES, torch.Generator().manual_seed(TEST_SEED))
    torch.manual_seed(seed)
    model = build_model("llama", shape) if overrides is None else build_model(
        "hamiltonian:symplectic_euler", shape, **overrides)
    generator = torch.Generator().manual_seed(seed)
    figures = train_on_stream(model, lambda: sample(BATCH_SIZE, generator), steps, lr=lr, weight_decay=0.1)
    return {**figures, "accuracy": evaluate_accuracy(model, *test, batch_size=256)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.run:
        spec = json.loads(args.run)
        result = {**spec, **run_one(args.task, args.steps, args.lr, spec["overrides"], spec["seed"])}
        print(json.dumps(result), flush=True)
        return result

    specs = [{"variant": name, "overrides": overrides, "seed": seed}
             for name, overrides in args.variants.items() for seed in args.seeds]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def launch(spec: dict) -> dict:
        command = [sys.executable, str(Path(__file__).resolve()), "--task", args.task, "--steps", str(args.steps),
                   "--lr", str(args.lr), "--run", json.dumps(spec)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            raise RuntimeError(f"run {spec} failed:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(result), file=sys.stderr, flush=True)
        return result

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(launch, specs))
    summary = {"task": args.task, "steps": args.steps, "lr": args.lr, "batch_size": BATCH_SIZE, "variants": {}}
    for name, overrides in args.variants.items():
        accuracies = [r["accuracy"] for r in results if r["variant"] == name]
        summary["variants"][name] = {"overrides": overrides, "accuracy_mean": statistics.fmean(accuracies),
                                     "accuracy_min": min(accuracies),
                                     "per_seed": dict(zip(map(str, args.seeds), accuracies))}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
