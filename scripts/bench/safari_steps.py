"""Does quality.py train as safari's train.py does? Replays safari's own training steps through quality.py's loop.

    (in the virtual environment of safari_train.py, which has safari's dependencies)
    .venv-safari/bin/python scripts/bench/safari_steps.py --safari_dir SAFARI --task associative_recall \\
        --output docs/bench/safari_steps/associative_recall.md

safari_equivalence.py shows that ``h3:pure:shift_b:safari_init`` is safari's H3 model; this checks the rest of a
training run. It runs safari's ``train.py`` as safari_train.py does (the task's H3 config as it stands, on a CPU,
seed ``--seed``) for the first ``--epochs`` epochs of the run (``trainer.max_steps``: the schedule keeps the
config's length), and records through a Lightning callback the model's initial weights, every step's batch, the
state of torch's random number generator as the step begins (from it the embedding dropout draws its mask), the
learning rate of every parameter group and the loss at every step, safari's learning-rate schedule over the whole
run (its scheduler's own formula), the weights after the last step and the validation accuracy after the last
epoch (the answers of safari's 500 test sequences).

Then it builds ``h3:pure:shift_b:safari_init`` from safari's initial weights (safari_equivalence.py's name map) and
takes the same steps with quality.py's own pieces and the task's recipe (``SAFARI_ASSOCIATIVE_RECALL``,
``SAFARI_INDUCTION_HEAD``): ``recipe_optimizer``, ``learning_rate_schedule``, ``embedding_dropout`` and
``training_step``, on safari's batches, each from safari's random state, then ``evaluate_accuracy`` on safari's
test set. Compared, parameter by parameter: the learning rate at every step of the whole run, the weight decay,
AdamW's betas and epsilon; then the loss at every replayed step, every weight at the end and the test accuracy.
Two controls must be flagged: the same replay with the family's weight-decay groups, and without the embedding
dropout. The exit status is 1 when the replay differs or a control is not flagged.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import quality
import torch
from safari_checkout import check_checkout, checkout_commit
from safari_equivalence import SAFARI_TASKS, TIED, load_safari_weights, our_model, our_name, safari_tensor
from safari_train import CPU_OVERRIDES, EXPERIMENTS, METRIC, run_argument_parser, train

RECIPES = {"associative_recall": quality.SAFARI_ASSOCIATIVE_RECALL, "induction_head": quality.SAFARI_INDUCTION_HEAD}
SCHEDULE_TOLERANCE = 1e-9  # relative: the same formula in float64
LOSS_TOLERANCE = 1e-4  # relative, at every replayed step
WEIGHT_TOLERANCE = 1e-3  # relative to each parameter's largest entry, after the last step
ACCURACY_TOLERANCE = 0.004  # two answers of 500 (a prediction on a near-tie may flip with float rounding)
OPTIMIZER_FIELDS = ("weight_decay", "betas", "eps")


# ----------------------------------------------------------------------------------------------------------------------
# Recording safari's run
# ----------------------------------------------------------------------------------------------------------------------
def scheduled_rates(scheduler, steps: int) -> list[list[float]]:
    """Each parameter group's learning rate at each of ``steps`` steps, from the scheduler's own formula: a
    LambdaLR's (transformers' linear warm-up, our cosine) or timm's (safari's ``cosine_warmup_timm``)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return [[base * rate(step) for base, rate in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
                for step in range(steps)]
    if hasattr(scheduler, "_get_lr"):  # timm's Scheduler
        return [list(scheduler._get_lr(step)) for step in range(steps)]
    raise TypeError(f"no formula for the scheduler {type(scheduler).__name__}")


def record_safari(safari_dir: Path, task: str, seed: int, steps: int, total_steps: int) -> dict:
    """Runs safari's train.py for ``steps`` steps and returns what the module docstring lists."""
    import pytorch_lightning as pl  # noqa: PLC0415 (safari's dependency: in its virtual environment only)

    record: dict = {"steps": [], "accuracy": []}

    class Recorder(pl.Callback):
        def on_train_start(self, trainer, module):
            names = {id(param): name for name, param in module.model.named_parameters()}
            record["initial"] = {name: param.detach().clone() for name, param in module.model.named_parameters()}
            optimizer = trainer.optimizers[0]
            record["groups"] = [{"names": [names[id(param)] for param in group["params"]],
                                 **{field: group[field] for field in OPTIMIZER_FIELDS}}
                                for group in optimizer.param_groups]
            record["schedule"] = scheduled_rates(trainer.lr_scheduler_configs[0].scheduler, total_steps)
            random_state = torch.get_rng_state()  # a DataLoader's iterator draws its base seed from it
            batches = list(module.dataset.val_dataloader())  # safari's "val": its test sequences
            torch.set_rng_state(random_state)  # so that the run is the one safari_train.py's seed gives
            record["test"] = (torch.cat([batch[0] for batch in batches]), torch.cat([batch[1] for batch in batches]))

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            record["steps"].append({"inputs": batch[0].clone(), "targets": batch[1].clone(),
                                    "rng": torch.get_rng_state(),
                                    "rates": [group["lr"] for group in trainer.optimizers[0].param_groups]})

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            record["steps"][-1]["loss"] = outputs["loss"].item()

        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking:
                record["accuracy"].append((trainer.global_step, float(trainer.callback_metrics[METRIC])))

        def on_train_end(self, trainer, module):
            record["final"] = {name: param.detach().clone() for name, param in module.model.named_parameters()}

    with tempfile.TemporaryDirectory() as output_dir:
        overrides = [f"experiment={EXPERIMENTS[task]}", *CPU_OVERRIDES, f"train.seed={seed}",
                     f"+trainer.max_steps={steps}"]
        train(safari_dir, overrides, Path(output_dir), callbacks=(Recorder(),))
    validated = [step for step, _ in record["accuracy"]]
    if len(record["steps"]) != steps or not validated or validated[-1] != steps:
        raise SystemExit(f"safari's run took {len(record['steps'])} steps and validated after steps {validated}, "
                         f"expected {steps} steps and a validation after the last")
    return record


# ----------------------------------------------------------------------------------------------------------------------
# Replaying it through quality.py
# ----------------------------------------------------------------------------------------------------------------------
def per_parameter(groups: list[dict], names: list[list[str]], rates: list[list[float]]) -> dict[str, dict]:
    """Each parameter's optimizer settings and learning rates, from its group's."""
    settings = {}
    for index, (group, group_names) in enumerate(zip(groups, names)):
        for name in group_names:
            settings[name] = {**{field: group[field] for field in OPTIMIZER_FIELDS},
                              "rates": [step[index] for step in rates]}
    return settings


def replay(record: dict, task: str, recipe: quality.Recipe, total_steps: int) -> dict:
    """``h3:pure:shift_b:safari_init`` from safari's initial weights, trained on safari's steps by quality.py."""
    vocab_size, _ = SAFARI_TASKS[task]
    model = our_model(vocab_size, seed=0)
    our_names = {param: name for name, param in model.named_parameters()}
    load_safari_weights(model, record["initial"])
    lr = recipe.learning_rates[0]
    optimizer = quality.recipe_optimizer(model, recipe, lr)
    schedule, interval = quality.learning_rate_schedule(optimizer, recipe)
    if interval != "step":
        raise SystemExit(f"the recipe's schedule is stepped every {interval}, safari's every step")
    names = [[our_names[param] for param in group["params"]] for group in optimizer.param_groups]
    settings = per_parameter(optimizer.param_groups, names, scheduled_rates(schedule, total_steps))
    evaluate_after = {step for step, _ in record["accuracy"]}
    losses, rates, accuracy = [], [], []
    with quality.embedding_dropout(model, recipe.embedding_dropout):
        for done, step in enumerate(record["steps"], start=1):
            model.train()
            torch.set_rng_state(step["rng"])
            rates.append([group["lr"] for group in optimizer.param_groups])
            losses.append(quality.training_step(model, optimizer, step["inputs"], step["targets"]))
            schedule.step()
            if done in evaluate_after:
                accuracy.append(quality.evaluate_accuracy(model, *record["test"],
                                                          batch_size=quality.EVAL_BATCH_SIZE))
    return {"settings": settings, "replayed": per_parameter(optimizer.param_groups, names, rates),
            "losses": losses, "accuracy": accuracy,
            "final": {name: param.detach().clone() for name, param in model.named_parameters()}}


def compare(record: dict, ours: dict, total_steps: int) -> dict:
    """The largest differences (see the module docstring), each with its verdict."""
    safari_names = [group["names"] for group in record["groups"]]
    safari = per_parameter(record["groups"], safari_names, record["schedule"])
    safari_replayed = per_parameter(record["groups"], safari_names, [step["rates"] for step in record["steps"]])
    schedule, settings_differ, recorded = 0.0, [], 0.0
    for name, setting in safari.items():
        if name == TIED:
            continue
        theirs = ours["settings"][our_name(name)]
        if any(setting[field] != theirs[field] for field in ("weight_decay", "eps")) or \
                tuple(setting["betas"]) != tuple(theirs["betas"]):
            settings_differ.append(name)
        peak = max(setting["rates"])
        schedule = max(schedule, max(abs(a - b) for a, b in zip(setting["rates"], theirs["rates"])) / peak)
        replayed = ours["replayed"][our_name(name)]["rates"]
        recorded = max(recorded, max(abs(a - b) for a, b in zip(safari_replayed[name]["rates"], replayed)) / peak)
    safari_losses = [step["loss"] for step in record["steps"]]
    loss = max(abs(a - b) / abs(a) for a, b in zip(safari_losses, ours["losses"]))
    weight, weight_name = 0.0, ""
    for name, value in record["final"].items():
        if name == TIED:
            continue
        value = safari_tensor(name, value)
        difference = (value - ours["final"][our_name(name)]).abs().max().item() / value.abs().max().item()
        if difference > weight:
            weight, weight_name = difference, name
    safari_accuracy = [value for _, value in record["accuracy"]]
    accuracy = max(abs(a - b) for a, b in zip(safari_accuracy, ours["accuracy"]))
    checks = {
        "optimizer settings (weight decay, betas, eps) of every parameter": (
            ", ".join(settings_differ) or "the same", not settings_differ),
        f"learning rate of every parameter over all {total_steps:,} steps (largest difference / peak)": (
            f"{schedule:.1e}", schedule <= SCHEDULE_TOLERANCE),
        "learning rate used at each replayed step": (f"{recorded:.1e}", recorded <= SCHEDULE_TOLERANCE),
        "loss at each replayed step (largest relative difference)": (f"{loss:.1e}", loss <= LOSS_TOLERANCE),
        "weights after the last step (largest difference / the parameter's largest entry)": (
            f"{weight:.1e} (`{weight_name}`)", weight <= WEIGHT_TOLERANCE),
        f"test accuracy after each of the {len(safari_accuracy)} epochs (largest difference)": (
            f"{accuracy:.3f} (after the last: {safari_accuracy[-1]:.3f} safari, {ours['accuracy'][-1]:.3f} "
            f"quality.py)", accuracy <= ACCURACY_TOLERANCE),
    }
    per_epoch = len(record["steps"]) // len(safari_accuracy)
    epochs = [{"epoch": epoch + 1, "safari": (sum(safari_losses[epoch * per_epoch:(epoch + 1) * per_epoch]) / per_epoch,
                                              safari_accuracy[epoch]),
               "ours": (sum(ours["losses"][epoch * per_epoch:(epoch + 1) * per_epoch]) / per_epoch,
                        ours["accuracy"][epoch])}
              for epoch in range(len(safari_accuracy))]
    return {"checks": checks, "same": all(ok for _, ok in checks.values()), "epochs": epochs}


CONTROLS = {
    "the family's weight-decay groups": {"decay_groups": "family"},
    "no embedding dropout": {"embedding_dropout": 0.0},
}


def report(task: str, seed: int, steps: int, total_steps: int, result: dict, controls: dict, safari_dir: Path,
           command: str) -> str:
    lines = [f"# safari's training steps replayed by quality.py: {task}", "",
             f"HazyResearch/safari at commit {checkout_commit(safari_dir)}, experiment `{EXPERIMENTS[task]}`, "
             f"seed {seed}; torch {torch.__version__}. Command: `{command}`.", "",
             f"safari's `train.py` ran the first {steps:,} of the run's {total_steps:,} steps; quality.py took the "
             f"same steps from safari's initial weights with its recipe (`{RECIPES[task].schedule}`, safari's "
             f"weight-decay groups, embedding dropout {RECIPES[task].embedding_dropout:g}).", "",
             "| compared | difference | |", "|---|---|---|"]
    for check, (value, ok) in result["checks"].items():
        lines.append(f"| {check} | {value} | {'same' if ok else '**differs**'} |")
    epochs = result["epochs"]
    every = max(1, len(epochs) // 10)
    shown = epochs if len(epochs) <= 12 else [epochs[0], *epochs[every - 1::every]]
    lines += ["", "| epoch | training loss, safari | quality.py | test accuracy, safari | quality.py |",
              "|---|---|---|---|---|"]
    lines += [f"| {row['epoch']} | {row['safari'][0]:.6f} | {row['ours'][0]:.6f} | {row['safari'][1]:.3f} | "
              f"{row['ours'][1]:.3f} |" for row in shown]
    if not controls:
        return "\n".join(lines) + "\n"
    lines += ["", "Controls, which must differ:", "", "| replayed with | flagged by |", "|---|---|"]
    for control, outcome in controls.items():
        flagged = [check for check, (_, ok) in outcome["checks"].items() if not ok]
        lines.append(f"| {control} | {'; '.join(flagged) or '**nothing**'} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = run_argument_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the run to replay (default 2)")
    parser.add_argument("--controls", action=argparse.BooleanOptionalAction, default=True,
                        help="replay the controls too (default; --no-controls for long runs)")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    return args


def main(argv: list[str] | None = None) -> bool:
    args = parse_args(argv)
    command = " ".join(["python scripts/bench/safari_steps.py", *(argv if argv is not None else sys.argv[1:])])
    safari_dir = check_checkout(args.safari_dir)
    output = args.output.resolve() if args.output is not None else None  # safari's train.py moves to its checkout
    recipe = RECIPES[args.task]
    steps, total_steps = args.epochs * recipe.steps_per_epoch, recipe.steps
    record = record_safari(safari_dir, args.task, args.seed, steps, total_steps)
    result = compare(record, replay(record, args.task, recipe, total_steps), total_steps)
    controls = {name: compare(record, replay(record, args.task, dataclasses.replace(recipe, **change), total_steps),
                              total_steps)
                for name, change in CONTROLS.items() if args.controls}
    text = report(args.task, args.seed, steps, total_steps, result, controls, safari_dir, command)
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    flagged = all(not outcome["same"] for outcome in controls.values())
    print("quality.py takes safari's steps" if result["same"] else "the training steps differ", file=sys.stderr)
    if not flagged:
        print("a control was not flagged", file=sys.stderr)
    return result["same"] and flagged


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
