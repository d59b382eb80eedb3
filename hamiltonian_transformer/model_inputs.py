"""Input checks and position ids shared by the family's models."""

from __future__ import annotations

import torch
from transformers import PreTrainedConfig


def check_model_inputs(
    config: PreTrainedConfig,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    past_length: int,
) -> None:
    """Raise a ValueError naming the problem for inputs that would otherwise fail deep inside (or silently)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must have shape (batch, sequence), got {tuple(input_ids.shape)}.")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= config.vocab_size):
            bad = input_ids[(input_ids < 0) | (input_ids >= config.vocab_size)][0].item()
            raise ValueError(
                f"`input_ids` contains token id {bad}, outside the vocabulary [0, {config.vocab_size - 1}] "
                f"(vocab_size={config.vocab_size}); check that the tokenizer matches the model."
            )
    if inputs_embeds is not None and inputs_embeds.dim() != 3:
        raise ValueError(
            f"`inputs_embeds` must have shape (batch, sequence, hidden), got {tuple(inputs_embeds.shape)}."
        )
    name, tokens = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
    shape = tuple(tokens.shape[:2])
    if 0 in shape:
        raise ValueError(
            f"`{name}` has shape {tuple(tokens.shape)}: an empty {'batch' if shape[0] == 0 else 'sequence'}; pass at "
            "least one sequence of at least one token."
        )
    total = past_length + shape[1]
    if attention_mask is not None and tuple(attention_mask.shape) != (shape[0], total):
        raise ValueError(
            f"`attention_mask` has shape {tuple(attention_mask.shape)}, expected (batch, past + new tokens) = "
            f"{(shape[0], total)} for inputs of shape {shape} after {past_length} cached tokens."
        )
    if total > config.max_position_embeddings:
        raise ValueError(
            f"Sequence length {total} (past {past_length} + new {shape[1]}) exceeds `max_position_embeddings`="
            f"{config.max_position_embeddings} of this model."
        )


def padding_positions(
    attention_mask: torch.Tensor | None, past_length: int, length: int, device: torch.device
) -> torch.LongTensor:
    """Position ids (b or 1, t) of the new tokens, counting only real tokens, so left padding does not shift them."""
    if attention_mask is None:
        return torch.arange(past_length, past_length + length, device=device)[None]
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -length:].to(device)
