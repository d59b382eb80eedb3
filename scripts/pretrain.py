"""Pretrain a Hamiltonian Transformer or an H3 causal language model with Accelerate.

    python scripts/pretrain.py --model_type hamiltonian_transformer --preset small --output_dir outputs/ht-small
    accelerate launch --config_file scripts/accelerate/multi_gpu.yaml scripts/pretrain.py --model_type h3 \
        --preset small --output_dir outputs/h3-small
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/pretrain.py --preset tiny \
        --max_steps 20 --output_dir outputs/ht-tiny-ddp

(the last on two CPU ranks; any flag below can be added to each).

Data: the embedded Python-standard-library corpus by default (no download), or --dataset_name/--dataset_config, or
--train_file/--validation_file (txt, json/jsonl, csv, parquet), optionally --streaming. Without --tokenizer_name a
byte-level BPE of --vocab_size tokens is trained on the training text and saved in --output_dir. Documents are
packed into blocks of --seq_len tokens separated by EOS.

--output_dir ends up holding a Hub-ready folder that `AutoModelForCausalLM.from_pretrained` /
`AutoTokenizer.from_pretrained` load (weights, config, generation config, tokenizer, the model card README.md,
training_args.json with the steps done and planned, eval_results.json, training_log.jsonl; no pickle) and the
checkpoints `checkpoint-N/` (optimizer, scheduler and RNG state: sub-folders, which `push_to_hub` does not upload)
written atomically every --checkpointing_steps optimizer steps; `--resume_from_checkpoint latest` continues from the
newest complete one (same data order, RNG and schedule). Training runs --max_steps (or --num_train_epochs) unless
the opt-in --max_train_minutes stops it first, which the log, training_args.json and the card then say.
A setup problem (bad flag combination, unknown preset or config key, seq_len above the model's limit, missing text
column, empty corpus, half precision on a device without it) stops the run with one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# torch, transformers and the package are imported after the arguments are parsed: `--help` and flag errors answer
# at once instead of after seconds of imports.
if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

# A streamed corpus has no end to train the tokenizer on: use its first documents.
STREAMING_TOKENIZER_DOCS = 10_000
# Streams are shuffled through a buffer (datasets' IterableDataset.shuffle), reseeded every epoch.
STREAMING_SHUFFLE_BUFFER = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model_type", default="hamiltonian_transformer", help="hamiltonian_transformer or h3")
    model.add_argument("--preset", default="small", help="named size: tiny, small or base")
    model.add_argument("--config_overrides", default=None,
                       help="comma-separated config fields, e.g. hidden_size=256,num_hidden_layers=4")
    model.add_argument("--activation_checkpointing", "--gradient_checkpointing", action="store_true",
                       help="recompute each layer's activations in backward instead of storing them (transformers' "
                            "`activation_checkpointing_enable`; --gradient_checkpointing is its former name)")

    data = parser.add_argument_group("data (default: the embedded Python standard-library corpus)")
    data.add_argument("--dataset_name", default=None, help="a `datasets` Hub dataset")
    data.add_argument("--dataset_config", default=None)
    data.add_argument("--train_file", default=None, help=".txt, .json/.jsonl, .csv or .parquet")
    data.add_argument("--validation_file", default=None)
    data.add_argument("--text_column", default="text")
    data.add_argument("--streaming", action="store_true", help="stream the corpus (needs --max_steps)")
    data.add_argument("--validation_split_percentage", type=float, default=5.0,
                      help="held out of train when the source has no validation split")
    data.add_argument("--max_train_chars", type=int, default=None,
                      help="embedded corpus only: characters of training text to use (validation in proportion)")
    data.add_argument("--max_train_files", type=int, default=None, help="embedded corpus only: files to use")
    data.add_argument("--max_eval_samples", type=int, default=None, help="evaluate on the first N validation blocks")
    data.add_argument("--seq_len", type=int, default=512, help="tokens per packed block")
    data.add_argument("--preprocessing_num_workers", type=int, default=None)
    data.add_argument("--cache_dir", default=None, help="`datasets` cache folder (default: HF_DATASETS_CACHE)")
    data.add_argument("--tokenizer_name", default=None, help="any AutoTokenizer name or folder (default: train a BPE)")
    data.add_argument("--vocab_size", type=int, default=None,
                      help="size of the trained BPE (default: the preset's vocab_size, at least the BPE's minimum)")

    train = parser.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=int, default=8)
    train.add_argument("--per_device_eval_batch_size", type=int, default=None, help="default: the train batch size")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=6e-4)
    train.add_argument("--ssm_learning_rate", type=float, default=None,
                       help="learning rate of the SSM parameters (default: min(1e-3, learning_rate))")
    train.add_argument("--weight_decay", type=float, default=0.1, help="not applied to norms, biases, SSM parameters")
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.95)
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    train.add_argument("--warmup_steps", type=int, default=0)
    train.add_argument("--lr_scheduler_type", default="cosine", help="any transformers SchedulerType value")
    train.add_argument("--max_steps", type=int, default=None, help="optimizer steps; overrides --num_train_epochs")
    train.add_argument("--num_train_epochs", type=float, default=1.0)
    train.add_argument("--max_train_minutes", type=float, default=None,
                       help="opt-in wall-clock cap for time-boxed runs: stop at the first logging step after this "
                            "much training time (the learning-rate schedule still spans --max_steps); a run it stops "
                            "early is recorded as cut short")
    train.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"],
                       help="default: the accelerate config's, else no")
    train.add_argument("--seed", type=int, default=42)

    run = parser.add_argument_group("logging and checkpoints")
    run.add_argument("--output_dir", required=True, type=Path)
    run.add_argument("--logging_steps", type=int, default=10)
    run.add_argument("--eval_steps", type=int, default=None, help="validate every N steps (always at the end)")
    run.add_argument("--checkpointing_steps", type=int, default=None, help="save the training state every N steps")
    run.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep only the N newest checkpoints")
    run.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    run.add_argument("--report_to", default="none",
                     help="Accelerate trackers: none, all, or a comma-separated list (tensorboard, wandb, ...)")
    run.add_argument("--push_to_hub", action="store_true", help="upload the final folder to --hub_model_id")
    run.add_argument("--hub_model_id", default=None, help="NAMESPACE/NAME of the Hub model repository")
    args = parser.parse_args(argv)

    positive = ["seq_len", "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps"]
    optional_positive = ["per_device_eval_batch_size", "max_steps", "eval_steps", "checkpointing_steps",
                         "checkpoints_total_limit", "max_eval_samples", "vocab_size"]
    for name in positive + optional_positive:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    if args.warmup_steps < 0 or args.num_train_epochs <= 0 or args.max_grad_norm < 0:
        parser.error("--warmup_steps and --max_grad_norm must be >= 0 and --num_train_epochs > 0")
    if args.max_train_minutes is not None and args.max_train_minutes <= 0:
        parser.error("--max_train_minutes must be positive")
    if args.streaming and args.max_steps is None:
        parser.error("--streaming needs --max_steps (a stream has no length to count epochs in)")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id NAMESPACE/NAME")
    for flag in ("train_file", "validation_file"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            parser.error(f"--{flag} {path}: no such file")
    if args.validation_file is not None and args.train_file is None:
        parser.error("--validation_file needs --train_file")
    # The choices that need the libraries, checked once `--help` is out of the way.
    from transformers import SchedulerType

    from hamiltonian_transformer import PRESETS

    for flag, value, allowed in (("model_type", args.model_type, list(PRESETS)),
                                 ("lr_scheduler_type", args.lr_scheduler_type, [t.value for t in SchedulerType])):
        if value not in allowed:
            parser.error(f"argument --{flag}: invalid choice: {value!r} (choose from {', '.join(allowed)})")
    args.per_device_eval_batch_size = args.per_device_eval_batch_size or args.per_device_train_batch_size
    return args


def dataset_description(args: argparse.Namespace) -> str:
    """What eval_results.json calls the data: a Hub id, or words (which the model card does not list as a Hub id)."""
    if args.dataset_name:
        return args.dataset_name
    if args.train_file:
        return f"local files {Path(args.train_file).name}" + (
            f" / {Path(args.validation_file).name}" if args.validation_file else "")
    return f"Python {sys.version_info.major}.{sys.version_info.minor} standard library source (embedded corpus)"


def load_tokenizer(args: argparse.Namespace, train_texts, accelerator: Accelerator,
                   resuming: bool) -> PreTrainedTokenizerBase:
    """--tokenizer_name, else the BPE already saved in --output_dir (on resume, or by the main process), else train one.

    Only the main process trains; it runs first (inside `main_process_first`), the others then load its files.
    """
    from datasets import IterableDataset
    from transformers import AutoTokenizer

    from hamiltonian_transformer import PRESETS
    from hamiltonian_transformer.data import train_bpe_tokenizer
    from hamiltonian_transformer.data.tokenizer import MIN_VOCAB_SIZE

    if args.tokenizer_name:
        return AutoTokenizer.from_pretrained(args.tokenizer_name)
    saved = (args.output_dir / "tokenizer.json").is_file()
    if saved and (resuming or not accelerator.is_main_process):
        return AutoTokenizer.from_pretrained(args.output_dir)
    vocab_size = args.vocab_size or max(PRESETS[args.model_type][args.preset]["vocab_size"], MIN_VOCAB_SIZE)
    if isinstance(train_texts, IterableDataset):
        texts = (row[args.text_column] for row in itertools.islice(train_texts, STREAMING_TOKENIZER_DOCS))
    else:
        texts = (batch[args.text_column] for batch in train_texts.iter(batch_size=1000))
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    tokenizer.save_pretrained(args.output_dir)
    return tokenizer


@dataclass
class PretrainingRun:
    """What `setup` prepares for `train`: the prepared (wrapped) model, optimizer, scheduler and loaders."""

    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # accelerate's AcceleratedScheduler
    train_loader: Any  # accelerate's DataLoaderShard / DataLoaderDispatcher
    eval_loader: Any
    max_steps: int
    resume_dir: Path | None


@dataclass
class Progress:
    """Where the run is in its data, saved with each checkpoint and read back on resume."""

    epoch: int = 0
    batches_in_epoch: int = 0
    train_tokens: int = 0


def setup(args: argparse.Namespace) -> PretrainingRun:
    """Everything before the first step; every refusal happens here, as a ValueError."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import (
        DataLoaderConfiguration,
        DistributedDataParallelKwargs,
        ProjectConfiguration,
        set_seed,
    )
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, get_scheduler

    from hamiltonian_transformer.checkpoints import resolve_resume_checkpoint
    from hamiltonian_transformer.config_from_flags import (
        build_config,
        check_mixed_precision,
        check_seq_len,
        parse_config_overrides,
    )
    from hamiltonian_transformer.data import load_text_datasets, pack_dataset
    from hamiltonian_transformer.optimization import parameter_groups
    from hamiltonian_transformer.training import parameters_without_gradient

    overrides = parse_config_overrides(args.config_overrides)
    # Refuse a bad preset or override now rather than after the data is prepared (the real config needs the
    # tokenizer's vocabulary and special tokens).
    build_config(args.model_type, args.preset, overrides)
    report_to = None if args.report_to == "none" else (args.report_to if args.report_to == "all"
                                                       else args.report_to.split(","))
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(args.output_dir),
                                            logging_dir=str(args.output_dir / "runs")),
        # The sampler's order depends only on (seed, epoch), so a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    # The precision can also come from the accelerate config (ACCELERATE_MIXED_PRECISION): check the one in effect.
    check_mixed_precision(accelerator.mixed_precision, accelerator.device)
    set_seed(args.seed)
    if accelerator.is_main_process:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    resume_dir = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir,
                                           log=accelerator.print)

    with accelerator.main_process_first():
        raw = load_text_datasets(
            dataset_name=args.dataset_name, dataset_config=args.dataset_config, train_file=args.train_file,
            validation_file=args.validation_file, text_column=args.text_column, streaming=args.streaming,
            validation_split_percentage=args.validation_split_percentage, max_files=args.max_train_files,
            max_chars=args.max_train_chars, cache_dir=args.cache_dir,
        )
        tokenizer = load_tokenizer(args, raw["train"], accelerator, resuming=resume_dir is not None)
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        fixed = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                 "pad_token_id": pad_token_id}
        if "vocab_size" not in overrides:
            fixed["vocab_size"] = len(tokenizer)
        elif overrides["vocab_size"] < len(tokenizer):
            raise ValueError(f"--config_overrides vocab_size={overrides['vocab_size']} is smaller than the tokenizer's "
                             f"{len(tokenizer)} tokens.")
        config = build_config(args.model_type, args.preset, overrides, **fixed)
        check_seq_len(args.seq_len, config)
        train_set = pack_dataset(raw["train"], tokenizer, args.seq_len, args.text_column,
                                 num_proc=args.preprocessing_num_workers)
        eval_set = pack_dataset(raw["validation"], tokenizer, args.seq_len, args.text_column,
                                num_proc=args.preprocessing_num_workers)
    if args.max_eval_samples is not None:
        eval_set = (eval_set.take(args.max_eval_samples) if args.streaming
                    else eval_set.select(range(min(args.max_eval_samples, len(eval_set)))))
    if args.streaming:
        train_set = train_set.shuffle(seed=args.seed, buffer_size=STREAMING_SHUFFLE_BUFFER)

    model = AutoModelForCausalLM.from_config(config)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if accelerator.num_processes > 1:
        # prepare() wraps the model in DistributedDataParallel with these settings (the accelerator came first).
        unused = parameters_without_gradient(model)
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=bool(unused))
        if unused:
            accelerator.print(f"{len(unused)} parameters get no gradient ({', '.join(unused)}): "
                              "DistributedDataParallel is told to expect that")
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args.weight_decay, args.learning_rate, args.ssm_learning_rate),
        lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
    )
    # Each loader draws its iterator seeds from its own generator, not the global RNG: a resumed run opens its
    # iterators at other moments than the original run, and must not shift the dropout masks that follow.
    train_loader = DataLoader(train_set.with_format("torch"), batch_size=args.per_device_train_batch_size,
                              shuffle=not args.streaming, generator=torch.Generator().manual_seed(args.seed))
    eval_loader = DataLoader(eval_set.with_format("torch"), batch_size=args.per_device_eval_batch_size,
                             generator=torch.Generator().manual_seed(args.seed))
    train_loader, eval_loader, model, optimizer = accelerator.prepare(train_loader, eval_loader, model, optimizer)
    if args.max_steps is not None:
        max_steps = args.max_steps
    else:
        max_steps = math.ceil(args.num_train_epochs * math.ceil(len(train_loader) / args.gradient_accumulation_steps))
    # The prepared scheduler steps once per process per optimizer step (accelerate assumes the batch grew with the
    # number of processes), so its step counts are given in those units.
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=args.warmup_steps * accelerator.num_processes,
                              num_training_steps=max_steps * accelerator.num_processes)
    scheduler = accelerator.prepare(scheduler)
    return PretrainingRun(accelerator=accelerator, tokenizer=tokenizer, model=model, optimizer=optimizer,
                          scheduler=scheduler, train_loader=train_loader, eval_loader=eval_loader, max_steps=max_steps,
                          resume_dir=resume_dir)


class TrainingLog:
    """`training_log.jsonl` (main process): one JSON object per logging or evaluation event, also sent to trackers."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, resume_step: int | None):
        from hamiltonian_transformer.run_outputs import TRAINING_LOG_FILE

        self.accelerator = accelerator
        self.path = output_dir / TRAINING_LOG_FILE
        if accelerator.is_main_process and self.path.exists():
            # Drop what a killed run logged after the checkpoint being resumed (or everything, on a fresh start).
            kept = [line for line in self.path.read_text().splitlines()
                    if resume_step is not None and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


def train(args: argparse.Namespace, run: PretrainingRun) -> int:
    import dataclasses

    import torch
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from hamiltonian_transformer.checkpoints import prune_checkpoints, read_checkpoint_progress, save_checkpoint
    from hamiltonian_transformer.hub import CheckpointError, HubPushError, push_checkpoint
    from hamiltonian_transformer.run_outputs import RunProgress, json_ready, perplexity, save_final_model
    from hamiltonian_transformer.training import evaluate_causal_lm

    accelerator, model, optimizer, scheduler = run.accelerator, run.model, run.optimizer, run.scheduler
    train_loader, eval_loader, max_steps = run.train_loader, run.eval_loader, run.max_steps
    step, progress = 0, Progress()
    if run.resume_dir is not None:
        accelerator.load_state(str(run.resume_dir))
        step, saved = read_checkpoint_progress(run.resume_dir)
        progress = Progress(**saved)
        accelerator.print(f"resumed from {run.resume_dir} at step {step}")
    log = TrainingLog(accelerator, args.output_dir, step if run.resume_dir is not None else None)
    accelerator.init_trackers("pretrain", config={k: v for k, v in json_ready(vars(args)).items()
                                                  if isinstance(v, (int, float, str, bool))})
    dataset_name = dataset_description(args)
    total_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    accelerator.print(f"{args.model_type}/{args.preset}: {accelerator.unwrap_model(model).num_parameters():,} "
                      f"parameters; {accelerator.num_processes} process(es), {total_batch} sequences of "
                      f"{args.seq_len} tokens per step, {max_steps} steps; data: {dataset_name}")

    epoch, skip, tokens = progress.epoch, progress.batches_in_epoch, progress.train_tokens
    bar = tqdm(total=max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="pretrain")
    window_losses, micro_losses, window_tokens, window_start = [], [], 0, time.perf_counter()
    batches_run, out_of_time, run_start = 0, False, time.perf_counter()
    model.train()
    while step < max_steps and not out_of_time:
        train_loader.set_epoch(epoch)
        batches_in_epoch = skip
        batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        skip = 0
        for batch in batches:
            batches_in_epoch += 1
            batches_run += 1
            with accelerator.accumulate(model):
                loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro_losses.append(loss.detach().float())
            batch_tokens = batch["input_ids"].numel() * accelerator.num_processes
            tokens += batch_tokens
            window_tokens += batch_tokens
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            window_losses.append(torch.stack(micro_losses).mean())
            micro_losses = []
            if step % args.logging_steps == 0 or step == max_steps:
                # One collective for both: the mean loss over processes, and whether any process is out of time.
                time_up = args.max_train_minutes is not None and (
                    time.perf_counter() - run_start > 60 * args.max_train_minutes)
                stats = torch.stack([torch.stack(window_losses).mean(),
                                     torch.tensor(float(time_up), device=accelerator.device)])
                stats = accelerator.reduce(stats, reduction="mean")
                train_loss, out_of_time = stats[0].item(), stats[1].item() > 0
                elapsed = time.perf_counter() - window_start
                record = {"step": step, "loss": train_loss, "learning_rate": scheduler.get_last_lr()[0],
                          "tokens": tokens, "tokens_per_second": window_tokens / max(elapsed, 1e-9)}
                bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{record['learning_rate']:.2e}",
                                tok_s=f"{record['tokens_per_second']:.0f}")
                log.write(record)
                window_losses, window_tokens, window_start = [], 0, time.perf_counter()
            if args.eval_steps and step % args.eval_steps == 0 and step < max_steps:
                eval_loss = evaluate_causal_lm(model, eval_loader, accelerator)
                log.write({"step": step, "eval_loss": eval_loss, "perplexity": perplexity(eval_loss)})
                accelerator.print(f"step {step}: eval_loss {eval_loss:.4f}, perplexity {perplexity(eval_loss):.2f}")
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                progress = Progress(epoch=epoch, batches_in_epoch=batches_in_epoch, train_tokens=tokens)
                save_checkpoint(accelerator, args.output_dir, step, dataclasses.asdict(progress))
                if args.checkpoints_total_limit and accelerator.is_main_process:
                    prune_checkpoints(args.output_dir, args.checkpoints_total_limit)
            if step >= max_steps or out_of_time:
                break
        if step < max_steps and not out_of_time:
            epoch += 1
    bar.close()
    steps_done = RunProgress(step, max_steps, f"--max_train_minutes {args.max_train_minutes} reached" if out_of_time
                             else None)
    if steps_done.cut_short:
        accelerator.print(f"stopped at step {step} of {max_steps}: {steps_done.stop_reason}")

    eval_loss = evaluate_causal_lm(model, eval_loader, accelerator)
    batches_per_process = gather_object([batches_run])
    log.write({"step": step, "eval_loss": eval_loss, "perplexity": perplexity(eval_loss),
               "batches_per_process": batches_per_process})
    eval_results = {"eval_loss": eval_loss, "perplexity": perplexity(eval_loss), "dataset": dataset_name,
                    "dataset_config": args.dataset_config, "dataset_split": "validation", "train_tokens": tokens}
    training_args = {**vars(args), "total_batch_size": total_batch, "num_processes": accelerator.num_processes,
                     **steps_done.as_metadata()}
    save_final_model(accelerator, model, run.tokenizer, args.output_dir, training_args, eval_results,
                     model_id=args.hub_model_id)
    del model
    end_training(accelerator, run)
    accelerator.print(f"validation loss {eval_loss:.4f}, perplexity {perplexity(eval_loss):.2f}; "
                      f"model saved to {args.output_dir}")
    if args.push_to_hub and accelerator.is_main_process:
        try:
            push_checkpoint(args.output_dir, args.hub_model_id)
        except (CheckpointError, HubPushError) as err:
            print(f"pretrain.py: error: the model is saved in {args.output_dir} but the upload failed: {err}",
                  file=sys.stderr)
            return 1
    return 0


def end_training(accelerator: Accelerator, run: PretrainingRun) -> None:
    """Let go of the prepared model, then end the trackers and the process group (`Accelerator.end_training`).

    The order matters with several processes. DDP's reducer holds a reference to the process group, and when the
    reducer drops the last one, gloo's destructor joins its worker threads with the GIL held; a worker still freeing a
    finished collective's tensors waits for the GIL, and the process never exits (now and then, at the end of a
    two-CPU-rank run). Freed first, the reducer leaves the last reference to torch's Python handle, whose destructor
    releases the GIL before it joins. The caller must drop its own references to the model before the call.
    """
    run.model = None
    accelerator.free_memory()  # the accelerator's own list of prepared models; collects reference cycles
    accelerator.end_training()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run = setup(args)
    except ValueError as err:
        print(f"pretrain.py: error: {err}", file=sys.stderr)
        return 1
    return train(args, run)


if __name__ == "__main__":
    sys.exit(main())
