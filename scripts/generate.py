"""Generate text with a causal LM of this family (or any Auto model) from a checkpoint folder or a Hub id.

    python scripts/generate.py outputs/main_job/hamiltonian_transformer --prompt "def main(" --max_new_tokens 64
    python scripts/generate.py outputs/main_job/h3 --prompt "import " --do_sample --temperature 0.8 --top_k 50
    python scripts/generate.py outputs/main_job/h3 --prompt "class " --num_beams 4

Greedy decoding by default; --do_sample for sampling (temperature, top-k, top-p), --num_beams N for beam search.
Tokens are streamed to the terminal as they are generated (`TextStreamer`), except with beam search, whose best
sequence is only known at the end and is printed then. --trust_remote_code loads a checkpoint's own modelling code
where this package is not installed.
"""

from __future__ import annotations

import argparse
import sys

# torch, transformers and the package (whose import registers the family with the Auto classes) are imported after
# the arguments are parsed, so that `--help` and flag errors answer at once.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model_name_or_path", help="checkpoint folder written by save_pretrained, or a Hub id")
    parser.add_argument("--prompt", default="def ", help="text to continue (empty: start from the BOS token)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling only")
    parser.add_argument("--top_k", type=int, default=50, help="sampling only; 0 disables")
    parser.add_argument("--top_p", type=float, default=1.0, help="sampling only; 1.0 disables")
    parser.add_argument("--num_beams", type=int, default=1, help="beam search with this many beams when > 1")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    parser.add_argument("--no_stream", action="store_true", help="print the text only when generation has finished")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or args.num_beams < 1:
        parser.error("--max_new_tokens and --num_beams must be at least 1")
    if args.do_sample and args.num_beams > 1:
        parser.error("choose sampling (--do_sample) or beam search (--num_beams > 1), not both")
    if not (args.temperature > 0 and 0 < args.top_p <= 1 and args.top_k >= 0):
        parser.error("sampling needs --temperature > 0, 0 < --top_p <= 1 and --top_k >= 0")
    from hamiltonian_transformer.config_from_flags import check_model_folder

    try:
        check_model_folder(args.model_name_or_path, "model_name_or_path")
    except ValueError as err:
        parser.error(str(err))
    return args


def generate(args: argparse.Namespace) -> str:
    """Load the model and tokenizer, generate, and return the prompt followed by its continuation."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TextStreamer, set_seed

    import hamiltonian_transformer  # noqa: F401  (registers the family with the Auto classes)
    from hamiltonian_transformer.config_from_flags import check_architecture, load_pretrained_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    check_architecture(config, args.model_name_or_path, ("ForCausalLM", "LMHeadModel"), "causal language model")
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    model = load_pretrained_model(AutoModelForCausalLM, args.model_name_or_path, "model_name_or_path", config=config,
                                  trust_remote_code=args.trust_remote_code)
    model.to(device).eval()
    if args.prompt:
        input_ids = tokenizer(args.prompt, return_tensors="pt", add_special_tokens=False).input_ids
    elif tokenizer.bos_token_id is not None:
        input_ids = torch.tensor([[tokenizer.bos_token_id]])
    else:
        raise ValueError(f"the tokenizer of {args.model_name_or_path} has no BOS token to start an empty --prompt from")
    limit = model.config.max_position_embeddings
    if input_ids.shape[1] + args.max_new_tokens > limit:
        raise ValueError(f"prompt ({input_ids.shape[1]} tokens) + --max_new_tokens {args.max_new_tokens} exceeds the "
                         f"model's max_position_embeddings={limit}")
    set_seed(args.seed)
    options = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams, "do_sample": args.do_sample}
    if args.do_sample:
        options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    streamer = None if args.no_stream or args.num_beams > 1 else TextStreamer(tokenizer, skip_special_tokens=True)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        output = model.generate(input_ids.to(device), attention_mask=torch.ones_like(input_ids).to(device),
                                pad_token_id=pad_token_id, streamer=streamer, **options)
    text = tokenizer.decode(output[0], skip_special_tokens=True)
    if streamer is None:
        print(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        generate(args)
    except (ValueError, OSError) as err:
        print(f"generate.py: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
