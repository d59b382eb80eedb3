"""Upload a checkpoint folder to the Hugging Face Hub in one commit, with a model card.

    python scripts/push_to_hub.py outputs/main_job/hamiltonian_transformer your-user/hamiltonian-small --dry_run
    python scripts/push_to_hub.py outputs/main_job/h3 your-user/h3-small --private --revision experiments

Options: --private, --revision BRANCH, --commit_message MSG, --token TOKEN, --dry_run, --max_shard_size 5GB,
--license apache-2.0, --trust_remote_code. The folder is checked (it must load with AutoConfig / AutoModel*) before
anything is sent. `--dry_run` prints the files and the rendered card and sends nothing (no token needed). The token
comes from --token, else HF_TOKEN, else `hf auth login`; set HF_ENDPOINT to use another Hub. On failure one line
goes to stderr and the exit code is 1.
See hamiltonian_transformer/hub.py for what is uploaded and the eval_results.json / training_args.json formats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The package and transformers are imported after the arguments are parsed, so that `--help` answers at once.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint_dir", type=Path, help="folder written by save_pretrained (or a training run)")
    parser.add_argument("repo_id", help="NAMESPACE/NAME of the model repository")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    parser.add_argument("--commit_message", default=None)
    parser.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN or login)")
    parser.add_argument("--dry_run", action="store_true", help="print the files and the card; upload nothing")
    parser.add_argument("--max_shard_size", default=None,
                        help="re-save weights in safetensors shards of at most this size when a file is larger "
                             "(default: hamiltonian_transformer.hub.DEFAULT_MAX_SHARD_SIZE, 5GB)")
    parser.add_argument("--license", default=None,
                        help="license id for the card metadata (default: hamiltonian_transformer.hub.DEFAULT_LICENSE)")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="run the checkpoint's own modelling code to check that it loads")
    args = parser.parse_args(argv)
    if not args.checkpoint_dir.is_dir():
        parser.error(f"checkpoint_dir {args.checkpoint_dir}: no such folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transformers.utils import logging as transformers_logging

    from hamiltonian_transformer.hub import (
        DEFAULT_LICENSE,
        DEFAULT_MAX_SHARD_SIZE,
        CheckpointError,
        HubPushError,
        push_checkpoint,
    )

    # Loading the checkpoint is only a check here: its progress bar would be noise next to the upload's.
    transformers_logging.disable_progress_bar()
    try:
        push_checkpoint(args.checkpoint_dir, args.repo_id, private=args.private, revision=args.revision,
                        commit_message=args.commit_message, token=args.token, dry_run=args.dry_run,
                        max_shard_size=args.max_shard_size or DEFAULT_MAX_SHARD_SIZE,
                        license=args.license or DEFAULT_LICENSE,
                        trust_remote_code=args.trust_remote_code)
    except (CheckpointError, HubPushError) as err:
        print(f"push_to_hub: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
