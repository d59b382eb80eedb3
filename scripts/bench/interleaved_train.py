"""Training-step throughput of several models in one process, their steps interleaved round by round.

    python scripts/bench/interleaved_train.py --models h3,h3:pure,llama --seq_len 2048 --rounds 5

speed.py measures each model in its own process, one after the other, so a slow minute on a shared machine lands on
one model only. Here every round times one training step (forward, backward, AdamW) of each model in turn, and each
model's figure is its best round: disturbances hit all models alike. Reports tokens/s and the ratio to the first
model named ``llama`` (or to the last model) as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
from comparators import MODEL_NAMES, ModelShape, build_model, choice_list
from measure import machine_info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=choice_list(MODEL_NAMES), default=["h3", "h3:pure", "llama"])
    parser.add_argument("--preset", choices=("tiny", "small", "base"), default="small")
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after two warm-up rounds")
    args = parser.parse_args(argv)
    for name in ("seq_len", "batch_size", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    return args


def interleaved_rounds(steps: dict[str, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each `steps[name]()` per timed round; every round calls each model once, in the given order in even
    rounds and in reverse in odd ones, so that no model always runs first (after the others have freed their memory)
    or always follows the same model."""
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(warmup + rounds):
        order = list(steps.items())
        for name, step in order if round_index % 2 == 0 else reversed(order):
            start = time.perf_counter()
            step()
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
        print(f"round {round_index}: " + ", ".join(f"{n} {s[-1]:.3f} s" for n, s in seconds.items() if s),
              file=sys.stderr, flush=True)
    return seconds


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    shape = ModelShape.from_preset(args.preset, max_length=args.seq_len)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape.vocab_size, (args.batch_size, args.seq_len), generator=generator)
    steps = {}
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, shape).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, optimizer=optimizer) -> None:
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[name] = step
    seconds = interleaved_rounds(steps, args.rounds)
    tokens = args.batch_size * args.seq_len
    reference = "llama" if "llama" in args.models else args.models[-1]
    best = {name: min(values) for name, values in seconds.items()}
    arguments = sys.argv[1:] if argv is None else argv
    results = {
        "command": " ".join(["python", "scripts/bench/interleaved_train.py", *arguments]),
        "machine": machine_info(torch.device("cpu")),
        "tokens_per_step": tokens,
        "models": {name: {"tokens_per_s": tokens / best[name], "vs_" + reference: best[reference] / best[name],
                          "step_seconds": seconds[name]} for name in args.models},
    }
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
