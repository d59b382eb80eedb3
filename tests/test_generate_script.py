"""scripts/generate.py on saved tiny checkpoints of both architectures: greedy, sampling and beam search give what
`model.generate` gives, greedy output is streamed, and bad requests end with one error line."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.script_helpers import MODEL_TYPES, load_script, save_tiny_causal_lm

generate_script = load_script("generate")
PROMPT = "def main("


@pytest.fixture(scope="module", params=MODEL_TYPES)
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    save_tiny_causal_lm(folder, request.param)
    return folder


def direct_generation(folder, **options) -> str:
    """What transformers' own `generate` returns for the prompt, for comparison."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    torch.manual_seed(0)
    output = model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=tokenizer.pad_token_id, **options)
    return tokenizer.decode(output[0], skip_special_tokens=True)


@pytest.mark.parametrize("flags, options", [
    ([], dict(do_sample=False)),
    (["--do_sample", "--temperature", "0.7", "--top_k", "20", "--top_p", "0.9"],
     dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9)),
    (["--num_beams", "3"], dict(num_beams=3, do_sample=False)),
], ids=["greedy", "sampling", "beam"])
def test_generates_what_model_generate_gives(checkpoint, capsys, flags, options):
    args = generate_script.parse_args([str(checkpoint), "--prompt", PROMPT, "--max_new_tokens", "12", *flags])
    text = generate_script.generate(args)
    assert text == direct_generation(checkpoint, max_new_tokens=12, **options)
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)
    # Streamed (greedy, sampling) or printed at the end (beam search): either way the text reaches the terminal.
    assert capsys.readouterr().out.strip() == text.strip()


def test_main_streams_greedy_tokens_to_stdout(checkpoint, capsys):
    assert generate_script.main([str(checkpoint), "--prompt", PROMPT, "--max_new_tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith(PROMPT)


def test_bad_requests_end_with_one_error_line(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_script.main([str(tmp_path / "missing"), "--prompt", PROMPT])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"{tmp_path / 'missing'}: no such model folder")
    assert generate_script.main([str(checkpoint), "--prompt", PROMPT, "--max_new_tokens", "100000"]) == 1
    assert "exceeds the model's max_position_embeddings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate_script.parse_args([str(checkpoint), "--do_sample", "--num_beams", "2"])
