"""What the energy term's extra key column costs inside the attention kernel: causal SDPA, forward + backward, by width.

    python scripts/bench/attention_widths.py --seq_len 2048 --widths 64,65,66,68,72,80

Energy attention runs SDPA on augmented vectors (``energy_attention.augment_keys``): head width d + 1 with the
|k|^2 column, rounded up to ``kernel_width`` when no cache is kept. This script times one causal
``scaled_dot_product_attention`` forward and backward at each width with queries, keys and values of that width (the
case SDPA's fused CPU kernel takes), and once more with queries and keys one column wider than the values (what a
kernel that takes the column without padding the values would see; SDPA then leaves its fused kernel). Rounds are
interleaved: each round times every case once, and each case's figure is its best round. Reports milliseconds and the
ratio to the first width as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from comparators import int_list
from interleaved_train import interleaved_rounds
from measure import machine_info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int_list(positive_sorted=True), default=[64, 65, 66, 68, 72, 80])
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=8, help="the small preset's 8 heads of 64")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after two warm-up rounds")
    args = parser.parse_args(argv)
    for name in ("seq_len", "heads", "batch_size", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    return args


def attention_step(shape: tuple[int, int, int], query_width: int, value_width: int) -> Callable[[], None]:
    """One causal SDPA forward and backward on random tensors (batch, heads, seq_len, width)."""
    generator = torch.Generator().manual_seed(0)
    query, key = (torch.randn(*shape, query_width, generator=generator, requires_grad=True) for _ in range(2))
    value = torch.randn(*shape, value_width, generator=generator, requires_grad=True)
    grad = torch.randn(*shape, value_width, generator=generator)

    def step() -> None:
        F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=query_width**-0.5).backward(grad)
        for tensor in (query, key, value):
            tensor.grad = None

    return step


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    shape = (args.batch_size, args.heads, args.seq_len)
    base = args.widths[0]
    cases = {f"{width}": (width, width) for width in args.widths}
    cases[f"{base + 1} (values {base})"] = (base + 1, base)
    steps = {name: attention_step(shape, *widths) for name, widths in cases.items()}
    seconds = interleaved_rounds(steps, args.rounds)
    best = {name: min(values) for name, values in seconds.items()}
    reference = best[f"{base}"]
    arguments = sys.argv[1:] if argv is None else argv
    results = {
        "command": " ".join(["python", "scripts/bench/attention_widths.py", *arguments]),
        "machine": machine_info(torch.device("cpu")),
        "shape": {"batch_size": args.batch_size, "heads": args.heads, "seq_len": args.seq_len},
        "cases": {name: {"query_key_width": cases[name][0], "value_width": cases[name][1], "ms": 1e3 * best[name],
                         f"vs_{base}": best[name] / reference, "round_seconds": seconds[name]} for name in cases},
    }
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
