"""Decoding cost of several models in one process after the same prompt, their decode runs interleaved round by round.

    python scripts/bench/interleaved_decode.py --models hamiltonian:symplectic_euler,llama --prompt_len 4096

As interleaved_train.py does for training steps: each round decodes ``--tokens`` tokens with every model in turn (one
forward of one token per step, on a fresh copy of the cache the prompt left, copied before any timing), and each model's
figure is its best round, so a slow minute on a shared machine hits all models alike. Reports ms per token and the
ratio to ``llama`` (or to the last model) as JSON on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
from comparators import MODEL_NAMES, ModelShape, build_model, choice_list
from interleaved_train import interleaved_rounds
from measure import machine_info

from hamiltonian_transformer.cache_conventions import CACHE_FIELD, output_cache

WARMUP_ROUNDS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=choice_list(MODEL_NAMES), default=["hamiltonian:symplectic_euler", "llama"])
    parser.add_argument("--preset", choices=("tiny", "small", "base"), default="small")
    parser.add_argument("--prompt_len", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=16, help="tokens decoded per model and round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after two warm-up rounds")
    args = parser.parse_args(argv)
    for name in ("prompt_len", "tokens", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    shape = ModelShape.from_preset(args.preset, max_length=args.prompt_len + args.tokens)
    prompt = torch.randint(0, shape.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    runs = {}
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, shape).eval()
        with torch.no_grad():
            prefilled = model(input_ids=prompt, use_cache=True)
        cache, first = output_cache(prefilled), prefilled.logits[:, -1:].argmax(-1)
        # one fresh copy of the prompt's cache per round (warm-up included), made before any timing
        copies = [copy.deepcopy(cache) for _ in range(WARMUP_ROUNDS + args.rounds)]

        @torch.no_grad()
        def decode(model=model, first=first, copies=copies) -> None:
            state, token = copies.pop(), first
            for _ in range(args.tokens):
                out = model(input_ids=token, use_cache=True, **{CACHE_FIELD: state})
                state, token = output_cache(out), out.logits[:, -1:].argmax(-1)

        runs[name] = decode
    seconds = interleaved_rounds(runs, args.rounds, WARMUP_ROUNDS)
    reference = "llama" if "llama" in args.models else args.models[-1]
    best = {name: 1e3 * min(values) / args.tokens for name, values in seconds.items()}  # ms per token
    arguments = sys.argv[1:] if argv is None else argv
    results = {
        "command": " ".join(["python", "scripts/bench/interleaved_decode.py", *arguments]),
        "machine": machine_info(torch.device("cpu")),
        "prompt_len": args.prompt_len,
        "models": {name: {"ms_per_token": best[name], "vs_" + reference: best[name] / best[reference],
                          "round_seconds": seconds[name]} for name in args.models},
    }
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
