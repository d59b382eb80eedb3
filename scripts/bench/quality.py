"""Quality at equal budgets: synthetic recall (H3 paper, Zoology MQAR), ListOps and language-model perplexity.

    python scripts/bench/quality.py --quick                                  # smoke run, minutes on 2 CPU cores
    python scripts/bench/quality.py --seeds 0,1,2 --output_dir outputs/bench/quality

Sections (``--sections``), each training every model from scratch with the same steps, batch and learning rate:
  synthetic  the H3 paper's induction head (vocabulary 20, length 30) and associative recall (vocabulary 10,
             length 20) with two-layer width-32 models: pure H3, pure H3 without its shift SSM (S4D-like), the
             Hamiltonian Transformer and Llama. Paper (H3 table 2): H3 100.0 / 99.8, attention 100 / 100,
             S4D 35.6 / 86.0. Accuracy of the answer token on held-out sequences.
  mqar       Zoology's multi-query associative recall, vocabulary 8192, (length, pairs) in ``--mqar_configs``,
             two layers at each width of ``--mqar_widths``: pure H3, hybrid H3 (one attention layer), the Hamiltonian
             Transformer and Llama. Accuracy over all queries. Published: attention ~1.0; pure H3 0.05-0.7 at 256.
  lm         validation perplexity on the embedded standard-library corpus (byte-level BPE trained on its train
             split) after ``--lm_tokens`` training tokens: the Hamiltonian Transformer, hybrid H3 and Llama.
  listops    ListOps accuracy through scripts/finetune_classification.py (Trainer), each model saved fresh and
             fine-tuned for ``--listops_steps`` steps; LRA reports Transformer 36.4%, S4 ~59% at lengths <= 2000.

Training data of the synthetic tasks is drawn fresh every step from a seeded generator (an endless stream); the test
sets use other seeds. Optimizer: AdamW with the family's parameter groups (no decay on norms, biases and SSM
parameters; SSM parameters at min(1e-3, lr)), linear warm-up over 10% of the steps, cosine decay, gradient clipping
at 1. Every figure is mean +- sample standard deviation over ``--seeds`` with the seed count, and the per-seed values
are in the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
import transformers
from comparators import MODEL_NAMES, ModelShape, build_model, choice_list, describe, int_list
from measure import machine_info
from transformers import get_cosine_schedule_with_warmup

from hamiltonian_transformer.data import listops_tokenizer, load_stdlib_corpus, pack_dataset, train_bpe_tokenizer
from hamiltonian_transformer.data.synthetic import (
    IGNORE_INDEX,
    answer_accuracy,
    associative_recall_without_separator,
    induction_head,
    multi_query_associative_recall,
)
from hamiltonian_transformer.optimization import parameter_groups
from hamiltonian_transformer.run_outputs import perplexity

REPO_ROOT = Path(__file__).resolve().parents[2]
FINETUNE_SCRIPT = REPO_ROOT / "scripts" / "finetune_classification.py"
SECTIONS = ("synthetic", "mqar", "lm", "listops")
SECTION_MODELS = {
    "synthetic": ("h3:pure", "h3:pure:no_shift", "hamiltonian:symplectic_euler", "llama"),
    "mqar": ("h3:pure", "h3", "hamiltonian:symplectic_euler", "llama"),
    "lm": ("hamiltonian:symplectic_euler", "h3", "llama"),
    "listops": ("hamiltonian:symplectic_euler", "h3", "llama"),
}
# The H3 paper's settings: (generator, vocabulary, length).
SYNTHETIC_TASKS = {"induction_head": (induction_head, 20, 30),
                   "associative_recall": (associative_recall_without_separator, 10, 20)}
MQAR_VOCAB = 8192
TEST_SEED_OFFSET = 1_000_003  # test sets come from seeds no training stream uses
QUICK = dict(seeds=[0], synthetic_steps=60, eval_examples=256, mqar_configs=[(64, 4)], mqar_widths=[64],
             mqar_steps=30, lm_tokens=16_384, lm_width=32, lm_max_chars=200_000, lm_vocab_size=512, lm_seq_len=64,
             lm_eval_blocks=32, listops_steps=20, listops_max_length=40, listops_train_size=200)
FULL = dict(seeds=[0, 1, 2], synthetic_steps=8000, eval_examples=2000, mqar_configs=[(64, 4), (128, 8), (256, 16)],
            mqar_widths=[64, 128, 256], mqar_steps=3000, lm_tokens=2_000_000, lm_width=128, lm_max_chars=5_000_000,
            lm_vocab_size=4096, lm_seq_len=256, lm_eval_blocks=256, listops_steps=2000, listops_max_length=500,
            listops_train_size=5000)


# ----------------------------------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------------------------------
def causal_loss(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the logits at each position against the aligned targets (-100 skipped)."""
    logits = model(input_ids=inputs, use_cache=False).logits  # (b, t, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def train(model, next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int, lr: float,
          weight_decay: float) -> dict[str, float]:
    """``steps`` AdamW steps on ``next_batch()`` (inputs, aligned targets); returns the last losses and the time."""
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay, lr), betas=(0.9, 0.95))
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    model.train()
    losses = []
    begin = time.perf_counter()
    for _ in range(steps):
        inputs, targets = next_batch()
        loss = causal_loss(model, inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    tail = losses[-max(1, steps // 20):]
    return {"final_train_loss": sum(tail) / len(tail), "train_seconds": time.perf_counter() - begin}


@torch.no_grad()
def evaluate_accuracy(model, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> float:
    """Accuracy over all scored positions of the test set, batch by batch."""
    model.eval()
    correct = total = 0
    for start in range(0, len(inputs), batch_size):
        logits = model(input_ids=inputs[start:start + batch_size], use_cache=False).logits
        batch_targets = targets[start:start + batch_size]
        scored = int((batch_targets != IGNORE_INDEX).sum())
        correct += answer_accuracy(logits, batch_targets) * scored
        total += scored
    return correct / total


@torch.no_grad()
def evaluate_perplexity(model, blocks: torch.Tensor, batch_size: int) -> float:
    """exp(mean next-token NLL) over every token of ``blocks`` (n, seq_len + 1)."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start:start + batch_size]
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        total_nll += F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum").item()
        total_tokens += batch[:, 1:].numel()
    return perplexity(total_nll / total_tokens)


def summarize(values: list[float]) -> dict[str, object]:
    """Mean, sample standard deviation (None for one seed: no spread is known), range and count."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def _shape(vocab_size: int, width: int, layers: int, head_dim: int, max_length: int) -> ModelShape:
    if width % head_dim:
        raise ValueError(f"width {width} is not a multiple of --head_dim {head_dim}")
    return ModelShape(vocab_size=vocab_size, hidden_size=width, num_layers=layers, num_heads=width // head_dim,
                      intermediate_size=4 * width, max_length=max_length)


def _run_seeds(model_name: str, shape: ModelShape, seeds: list[int], run: Callable[[torch.nn.Module, int], dict],
               metric: str, log: Callable[[str], None], label: str) -> dict:
    """Builds and trains one fresh model per seed; ``run(model, seed)`` returns the per-seed figures."""
    per_seed = []
    for seed in seeds:
        torch.manual_seed(seed)
        figures = run(build_model(model_name, shape), seed)
        per_seed.append({"seed": seed, **figures})
        log(f"  {label} {model_name} seed {seed}: {metric} {figures[metric]:.4f} "
            f"({figures.get('train_seconds', 0):.0f} s)")
    return {"parameters": describe(model_name, shape)["parameters"], metric: summarize([r[metric] for r in per_seed]),
            "per_seed": per_seed}


# ----------------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------------
def recall_run(sample, test: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace,
               steps: int) -> Callable[[torch.nn.Module, int], dict]:
    """Training on fresh batches of ``sample(n, generator)`` and accuracy on the ``test`` set."""
    def run(model: torch.nn.Module, seed: int) -> dict:
        generator = torch.Generator().manual_seed(seed)
        figures = train(model, lambda: sample(args.batch_size, generator), steps, args.lr, args.weight_decay)
        return {**figures, "accuracy": evaluate_accuracy(model, *test, batch_size=args.batch_size)}
    return run


def synthetic_section(args: argparse.Namespace, models: list[str], log: Callable[[str], None]) -> dict:
    results = {}
    for task, (generate, vocab_size, length) in SYNTHETIC_TASKS.items():
        shape = _shape(vocab_size, args.synthetic_width, 2, args.head_dim, length + 1)
        test = generate(args.eval_examples, vocab_size, length, torch.Generator().manual_seed(TEST_SEED_OFFSET),
                        loss_positions="answer")

        def sample(n: int, generator: torch.Generator, generate=generate, vocab_size=vocab_size, length=length):
            return generate(n, vocab_size, length, generator, loss_positions="answer")

        run = recall_run(sample, test, args, args.synthetic_steps)
        results[task] = {"vocab_size": vocab_size, "length": length, "width": args.synthetic_width, "layers": 2,
                         "models": {name: _run_seeds(name, shape, args.seeds, run, "accuracy", log, task)
                                    for name in models}}
    return results


def mqar_section(args: argparse.Namespace, models: list[str], log: Callable[[str], None]) -> dict:
    results = {}
    for length, pairs in args.mqar_configs:
        test = multi_query_associative_recall(args.eval_examples, MQAR_VOCAB, length, pairs,
                                              torch.Generator().manual_seed(TEST_SEED_OFFSET + length))

        def sample(n: int, generator: torch.Generator, length=length, pairs=pairs):
            return multi_query_associative_recall(n, MQAR_VOCAB, length, pairs, generator)

        run = recall_run(sample, test, args, args.mqar_steps)
        for width in args.mqar_widths:
            shape = _shape(MQAR_VOCAB, width, 2, args.head_dim, length)
            label = f"mqar L={length} pairs={pairs} width={width}"
            results[f"{length}x{pairs}@{width}"] = {
                "length": length, "pairs": pairs, "width": width,
                "models": {name: _run_seeds(name, shape, args.seeds, run, "accuracy", log, label) for name in models},
            }
    return results


def lm_section(args: argparse.Namespace, models: list[str], log: Callable[[str], None]) -> dict:
    corpus = load_stdlib_corpus(max_chars=args.lm_max_chars)
    tokenizer = train_bpe_tokenizer((row["text"] for row in corpus["train"]), vocab_size=args.lm_vocab_size)
    blocks = {split: torch.tensor(pack_dataset(corpus[split], tokenizer, args.lm_seq_len + 1)["input_ids"])
              for split in ("train", "validation")}
    validation = blocks["validation"][: args.lm_eval_blocks]
    steps = max(1, args.lm_tokens // (args.batch_size * args.lm_seq_len))
    shape = _shape(len(tokenizer), args.lm_width, args.lm_layers, args.head_dim, args.lm_seq_len)
    log(f"lm: {len(blocks['train'])} train blocks, {len(validation)} validation blocks of {args.lm_seq_len} tokens, "
        f"vocabulary {len(tokenizer)}, {steps} steps")

    def run(model: torch.nn.Module, seed: int) -> dict:
        generator = torch.Generator().manual_seed(seed)

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            batch = blocks["train"][torch.randint(0, len(blocks["train"]), (args.batch_size,), generator=generator)]
            return batch[:, :-1], batch[:, 1:]

        figures = train(model, next_batch, steps, args.lr, args.weight_decay)
        return {**figures, "validation_perplexity": evaluate_perplexity(model, validation, batch_size=32)}

    return {"train_tokens": steps * args.batch_size * args.lm_seq_len, "seq_len": args.lm_seq_len,
            "vocab_size": len(tokenizer), "width": args.lm_width, "layers": args.lm_layers,
            "train_blocks": len(blocks["train"]), "validation_tokens": validation[:, 1:].numel(),
            "models": {name: _run_seeds(name, shape, args.seeds, run, "validation_perplexity", log, "lm")
                       for name in models}}


def listops_section(args: argparse.Namespace, models: list[str], log: Callable[[str], None]) -> dict:
    if not FINETUNE_SCRIPT.exists():
        return {"status": "not run", "reason": f"{FINETUNE_SCRIPT.relative_to(REPO_ROOT)} is absent"}
    tokenizer = listops_tokenizer()
    shape = _shape(len(tokenizer), args.listops_width, args.listops_layers, args.head_dim,
                   args.listops_max_length + 2)
    root = args.output_dir / "listops"

    def run(model: torch.nn.Module, seed: int, name: str) -> dict:
        folder = root / name.replace(":", "-") / f"seed{seed}"
        model.save_pretrained(folder / "init")  # fresh weights: the classifier keeps the body, adds a score head
        tokenizer.save_pretrained(folder / "init")
        command = [
            sys.executable, str(FINETUNE_SCRIPT), "--model_name_or_path", str(folder / "init"),
            "--output_dir", str(folder / "run"), "--max_seq_length", str(args.listops_max_length + 1),
            "--listops_min_length", str(args.listops_min_length), "--listops_max_length", str(args.listops_max_length),
            "--listops_train_size", str(args.listops_train_size), "--listops_seed", "0",
            "--max_steps", str(args.listops_steps), "--per_device_train_batch_size", str(args.batch_size),
            "--learning_rate", str(args.lr), "--seed", str(seed), "--eval_strategy", "no", "--save_strategy", "no",
            "--report_to", "none", "--logging_steps", str(max(1, args.listops_steps // 10)),
        ]
        begin = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        eval_results = json.loads((folder / "run" / "eval_results.json").read_text())
        return {"accuracy": eval_results["eval_accuracy"], "test_accuracy": eval_results.get("test_accuracy"),
                "majority_class_accuracy": eval_results["majority_class_accuracy"],
                "train_seconds": time.perf_counter() - begin}

    results = {}
    for name in models:
        try:
            results[name] = _run_seeds(name, shape, args.seeds, lambda model, seed, name=name: run(model, seed, name),
                                       "accuracy", log, "listops")
        except subprocess.CalledProcessError as error:
            results[name] = {"status": "failed", "stderr_tail": error.stderr[-2000:]}
            log(f"  listops {name}: finetune_classification.py failed:\n{error.stderr[-2000:]}")
    return {"lengths": [args.listops_min_length, args.listops_max_length], "steps": args.listops_steps,
            "train_size": args.listops_train_size, "width": args.listops_width, "layers": args.listops_layers,
            "models": results}


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------
def _figure(entry: dict, metric: str, digits: int) -> str:
    if metric not in entry:
        return entry.get("status", "-")
    summary = entry[metric]
    if summary["std"] is None:
        return f"{summary['mean']:.{digits}f} (n=1)"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f} (n={summary['n']})"


def markdown_report(results: dict) -> str:
    machine = results["machine"]
    parts = ["## Quality", "", f"Hardware: {machine['cpu']}; torch {machine['torch']}, transformers "
             f"{machine['transformers']}. Command: `{results['command']}`. Mean ± sample std over seeds (n = seeds).",
             ""]
    synthetic = results.get("synthetic")
    if synthetic:
        tasks = list(synthetic)
        parts += ["**H3 synthetic tasks** (2 layers, width "
                  f"{synthetic[tasks[0]]['width']}, {results['settings']['synthetic_steps']} steps): accuracy", "",
                  "| model | parameters | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
        for name in synthetic[tasks[0]]["models"]:
            entries = [synthetic[task]["models"][name] for task in tasks]
            parts.append(f"| {name} | {entries[0]['parameters']:,} | "
                         + " | ".join(_figure(entry, "accuracy", 3) for entry in entries) + " |")
        parts.append("")
    mqar = results.get("mqar")
    if mqar:
        settings = list(mqar)
        names = list(mqar[settings[0]]["models"])
        parts += [f"**MQAR** (vocabulary {MQAR_VOCAB}, 2 layers, {results['settings']['mqar_steps']} steps): "
                  "accuracy; columns are length x pairs @ width", "",
                  "| model | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
        for name in names:
            parts.append(f"| {name} | " + " | ".join(_figure(mqar[s]["models"][name], "accuracy", 3)
                                                      for s in settings) + " |")
        parts.append("")
    lm = results.get("lm")
    if lm:
        parts += [f"**Validation perplexity**, embedded standard-library corpus, {lm['train_tokens']:,} training "
                  f"tokens, BPE vocabulary {lm['vocab_size']}, width {lm['width']}, {lm['layers']} layers, "
                  f"length {lm['seq_len']}", "", "| model | parameters | perplexity |", "|---|---|---|"]
        for name, entry in lm["models"].items():
            parts.append(f"| {name} | {entry['parameters']:,} | {_figure(entry, 'validation_perplexity', 2)} |")
        parts.append("")
    listops = results.get("listops")
    if listops:
        if "models" not in listops:
            parts += [f"**ListOps**: {listops['status']} ({listops['reason']})", ""]
        else:
            parts += [f"**ListOps** (lengths {listops['lengths'][0]}-{listops['lengths'][1]}, {listops['steps']} "
                      f"steps, width {listops['width']}, {listops['layers']} layers): validation accuracy", "",
                      "| model | parameters | accuracy | majority class |", "|---|---|---|---|"]
            for name, entry in listops["models"].items():
                if "per_seed" not in entry:  # the fine-tuning run failed
                    parts.append(f"| {name} | - | {entry['status']} | - |")
                    continue
                majority = entry["per_seed"][0]["majority_class_accuracy"]  # same validation split for every seed
                parts.append(f"| {name} | {entry['parameters']:,} | {_figure(entry, 'accuracy', 3)} | {majority:.3f} |")
            parts.append("")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def _mqar_configs(text: str) -> list[tuple[int, int]]:
    """"64:4,128:8" -> [(64, 4), (128, 8)]."""
    try:
        return [(int(length), int(pairs)) for length, pairs in (part.split(":") for part in text.split(",") if part)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LENGTH:PAIRS,... (e.g. 64:4,128:8), got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budgets and one seed: checks that it all runs")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/bench/quality"))
    parser.add_argument("--sections", type=choice_list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--models", type=choice_list(MODEL_NAMES),
                        help="models of every section (default: each section's own list, see above)")
    parser.add_argument("--seeds", type=int_list(), help="seeds of model init and training data (full: 0,1,2)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight_decay", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--head_dim", type=int, default=16, help="attention head size (heads = width / head_dim)")
    parser.add_argument("--eval_examples", type=int, help="test sequences per synthetic task")
    parser.add_argument("--synthetic_steps", type=int)
    parser.add_argument("--synthetic_width", type=int, default=32)
    parser.add_argument("--mqar_configs", type=_mqar_configs, help="LENGTH:PAIRS,... (full: 64:4,128:8,256:16)")
    parser.add_argument("--mqar_widths", type=int_list())
    parser.add_argument("--mqar_steps", type=int)
    parser.add_argument("--lm_tokens", type=int, help="training tokens per model (the equal budget)")
    parser.add_argument("--lm_width", type=int)
    parser.add_argument("--lm_layers", type=int, default=2)
    parser.add_argument("--lm_seq_len", type=int)
    parser.add_argument("--lm_vocab_size", type=int)
    parser.add_argument("--lm_max_chars", type=int, help="characters of the corpus's train split used")
    parser.add_argument("--lm_eval_blocks", type=int, help="validation blocks of lm_seq_len tokens scored")
    parser.add_argument("--listops_steps", type=int)
    parser.add_argument("--listops_min_length", type=int, default=10)
    parser.add_argument("--listops_max_length", type=int)
    parser.add_argument("--listops_train_size", type=int)
    parser.add_argument("--listops_width", type=int, default=64)
    parser.add_argument("--listops_layers", type=int, default=2)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("batch_size", "head_dim", "eval_examples", "synthetic_steps", "mqar_steps", "lm_tokens",
                "lm_seq_len", "lm_eval_blocks", "listops_steps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be positive, got {getattr(args, key)}")
    if not args.seeds:
        parser.error("--seeds needs at least one seed")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    args.output_dir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    settings = {key: value for key, value in vars(args).items() if key != "output_dir"}
    results: dict = {
        "command": " ".join(["python", "scripts/bench/quality.py", *(sys.argv[1:] if argv is None else argv)]),
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(torch.device("cpu")),
        "settings": settings,
        "section_seconds": {},
    }
    runners = {"synthetic": synthetic_section, "mqar": mqar_section, "lm": lm_section, "listops": listops_section}
    for section in args.sections:
        log(f"{section}")
        models = args.models or list(SECTION_MODELS[section])
        begin = time.perf_counter()
        results[section] = runners[section](args, models, log)
        results["section_seconds"][section] = time.perf_counter() - begin
        (args.output_dir / "quality.json").write_text(json.dumps(results, indent=2, default=str))
    (args.output_dir / "quality.json").write_text(json.dumps(results, indent=2, default=str))
    (args.output_dir / "quality.md").write_text(markdown_report(results))
    log(f"wrote {args.output_dir / 'quality.json'} and quality.md")
    return results


if __name__ == "__main__":
    main()
