"""Generation with a cache gives, at every step, the logits of a full forward pass without cache.

In the style of flash-linear-attention's `run_test_generation`: rows of random length are left-padded, prefilled
(whole, or in two chunks) and decoded token by token with the growing attention mask, and each step's logits are held
to a forward pass of that row alone, unpadded and without cache. Then the same for `generate()`: greedy continuing
from a returned cache, beam search (whose cache is reordered between beams) and sampling with a fixed seed. Token
equality would not do: a tiny random model's argmax often agrees by chance.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from hamiltonian_transformer import (
    H3Config,
    H3ForCausalLM,
    H3ForSequenceClassification,
    HamiltonianTransformerConfig,
    HamiltonianTransformerForCausalLM,
    HamiltonianTransformerForSequenceClassification,
)
from hamiltonian_transformer.cache_conventions import CACHE_FIELD, LINEAR_LAYERS_COUNT_TOKENS, output_cache

ATOL = RTOL = 1e-4
VOCAB = 99

MODELS = {
    "hamiltonian-euler": (HamiltonianTransformerForCausalLM, dict(integrator="euler")),
    "hamiltonian-symplectic_euler": (HamiltonianTransformerForCausalLM, dict(integrator="symplectic_euler")),
    "hamiltonian-leapfrog": (HamiltonianTransformerForCausalLM, dict(integrator="leapfrog")),
    "hamiltonian-symplectic_euler-3-steps-learned-p0": (
        HamiltonianTransformerForCausalLM,
        dict(integrator="symplectic_euler", evolution_steps=3, initial_momentum="learned"),
    ),
    "hamiltonian-leapfrog-window-entropy-learnable": (
        HamiltonianTransformerForCausalLM,
        dict(integrator="leapfrog", attention_window=5, attention_scale="entropy_invariant", learnable_energy=True),
    ),
    "h3-pure": (H3ForCausalLM, dict(attn_layer_idx=[])),
    "h3-hybrid": (H3ForCausalLM, dict(attn_layer_idx=[1])),
    "h3-multihead-legs-zoh": (
        H3ForCausalLM, dict(head_dim=2, ssm_init="legs", discretization="zoh", attn_layer_idx=[0])
    ),
}


def build(name: str) -> torch.nn.Module:
    model_class, overrides = MODELS[name]
    config_class = HamiltonianTransformerConfig if model_class is HamiltonianTransformerForCausalLM else H3Config
    torch.manual_seed(0)
    model = model_class(config_class.from_preset("tiny", pad_token_id=0, **overrides)).eval()
    with torch.no_grad():  # far from the init, so that a wrong cache shows in the logits
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(4.0)
    return model


def left_padded(lengths: list[int], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Rows of real tokens of the given lengths, each followed by `extra` more, left-padded with 0 to one width."""
    rows = [torch.randint(1, VOCAB, (n + extra,)) for n in lengths]
    width = max(lengths) + extra
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = row
        mask[r, width - len(row) :] = 1
    return ids, mask, rows


@torch.no_grad()
def per_row_logits(model, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each row alone, unpadded, without cache: (n_r, V) logits."""
    return [model(row[None], use_cache=False).logits[0] for row in rows]


def assert_logits(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("chunks", [1, 2], ids=["prefill", "prefill-in-two-chunks"])
@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_left_padded_prefill_and_decode_equal_per_row_forward(name, chunks):
    model = build(name)
    torch.manual_seed(1)
    lengths, decode = [5, 11, 8], 6
    ids, mask, rows = left_padded(lengths, extra=decode)
    expected = per_row_logits(model, rows)
    width = ids.shape[1]
    prompt_width = width - decode
    starts = [0, prompt_width // 2][:chunks] + [prompt_width]

    cache = None
    for begin, end in zip(starts[:-1], starts[1:]):  # prefill, whole or in chunks
        out = model(ids[:, begin:end], attention_mask=mask[:, :end], use_cache=True, **{CACHE_FIELD: cache})
        cache = output_cache(out)
        for r, length in enumerate(lengths):
            first_real = max(begin, prompt_width - length)  # this chunk's first real position in row r
            if first_real < end:
                offset = width - len(rows[r])  # padding in front of row r
                assert_logits(out.logits[r, first_real - begin :], expected[r][first_real - offset : end - offset],
                              f"prefill chunk [{begin}, {end}) row {r}")
    for t in range(prompt_width, width):  # decode one token at a time, the mask growing with it
        out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], use_cache=True, **{CACHE_FIELD: cache})
        cache = output_cache(out)
        for r in range(len(rows)):
            assert_logits(out.logits[r, -1], expected[r][t - (width - len(rows[r]))], f"decode step {t} row {r}")


def generated_logits_equal_per_row_forward(model, mask: torch.Tensor, out, what: str) -> None:
    """`generate(..., output_logits=True)`: step k's logits of row r equal the full forward of row r's sequence."""
    width = mask.shape[1]
    rows = [out.sequences[r, width - int(mask[r].sum()) :] for r in range(len(mask))]
    expected = per_row_logits(model, rows)
    for k, step_logits in enumerate(out.logits):
        for r, row in enumerate(rows):
            prompt_length = len(row) - len(out.logits)
            assert_logits(step_logits[r], expected[r][prompt_length + k - 1], f"{what}: step {k} row {r}")


@pytest.mark.parametrize("name", MODELS)
def test_greedy_generate_and_continuing_from_its_cache(name):
    model = build(name)
    torch.manual_seed(2)
    ids, mask, _ = left_padded([4, 9, 7])
    greedy = dict(do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    first = model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, **greedy)
    cache = output_cache(first)
    assert cache is not None
    generated_logits_equal_per_row_forward(model, mask, first, "first call")

    # continue: the returned cache holds every token but the last generated one
    sequences = torch.cat([first.sequences, torch.randint(1, VOCAB, (3, 2))], dim=1)
    full_mask = torch.cat([mask, torch.ones(3, sequences.shape[1] - mask.shape[1], dtype=mask.dtype)], dim=1)
    def continue_generation():
        return model.generate(
            sequences, attention_mask=full_mask, max_new_tokens=4, min_new_tokens=4, **greedy, **{CACHE_FIELD: cache}
        )

    if name == "h3-pure" and CACHE_FIELD == "past_key_values":
        # transformers < 5.24 asks a restarted cache for get_seq_length(), which caches of only linear-attention
        # layers (pure H3, Mamba) refuse; 5.24 skips that question for them.
        with pytest.raises(ValueError, match="get_seq_length"):
            continue_generation()
        return
    generated_logits_equal_per_row_forward(model, full_mask, continue_generation(), "continued call")


@pytest.mark.parametrize("name", MODELS)
def test_beam_search_scores_equal_full_forward_scores(name):
    """With length_penalty=0 a beam's score is the sum of its tokens' log-probabilities; computed during the search
    from a cache reordered between beams, it must equal that sum from a forward pass of the finished sequence."""
    model = build(name)
    torch.manual_seed(3)
    ids, mask, _ = left_padded([5, 8])
    new = 6
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, num_beams=3, num_return_sequences=3,
        do_sample=False, length_penalty=0.0, pad_token_id=0, eos_token_id=None, return_dict_in_generate=True,
        output_scores=True,
    )
    width = ids.shape[1]
    for r in range(out.sequences.shape[0]):
        row_mask = mask[r // 3]
        row = out.sequences[r, width - int(row_mask.sum()) :]
        log_probs = per_row_logits(model, [row])[0].log_softmax(-1)
        generated = row[-new:]
        expected = log_probs[len(row) - new - 1 : -1].gather(-1, generated[:, None]).sum()
        torch.testing.assert_close(out.sequences_scores[r], expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", MODELS)
def test_sampling_with_fixed_seed_has_full_forward_logits_and_repeats(name):
    model = build(name)
    torch.manual_seed(4)
    ids, mask, _ = left_padded([6, 3])
    sample = dict(do_sample=True, top_k=20, temperature=0.8, max_new_tokens=6, min_new_tokens=6, pad_token_id=0,
                  return_dict_in_generate=True, output_logits=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append(model.generate(ids, attention_mask=mask, **sample))
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    generated_logits_equal_per_row_forward(model, mask, runs[0], "sampling")


@pytest.mark.parametrize("assistant", ["prompt-lookup", "assistant-model"])
@pytest.mark.parametrize("name", ["hamiltonian-symplectic_euler", "hamiltonian-leapfrog", "h3-pure", "h3-hybrid"])
def test_assisted_decoding_has_full_forward_logits(name, assistant):
    """Assisted decoding verifies several candidate tokens in one forward, then crops the cache back to the accepted
    ones: each kept step's logits must still be those of a full forward. A repetitive prompt makes prompt lookup
    propose candidates; the model as its own assistant proposes candidates that are all accepted."""
    model = build(name)
    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]])
    extra = dict(prompt_lookup_num_tokens=3) if assistant == "prompt-lookup" else dict(assistant_model=model)

    def assisted():
        return model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0,
                              return_dict_in_generate=True, output_logits=True, **extra)

    if name.startswith("h3") and not LINEAR_LAYERS_COUNT_TOKENS:
        # before transformers 5.25 a recurrent state cannot be rolled back: H3 is `_is_stateful` there, as Mamba
        with pytest.raises(ValueError, match="stateful"):
            assisted()
        return
    generated_logits_equal_per_row_forward(model, torch.ones_like(ids), assisted(), assistant)


@pytest.mark.parametrize("name", MODELS)
def test_generate_from_inputs_embeds_has_full_forward_logits(name):
    model = build(name)
    torch.manual_seed(5)
    ids, mask, rows = left_padded([6, 3])
    out = model.generate(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask, max_new_tokens=5,
                         min_new_tokens=5, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                         output_logits=True)
    assert out.sequences.shape == (2, 5)  # generate() from embeddings returns the new tokens only
    full = [torch.cat([row, out.sequences[r]]) for r, row in enumerate(rows)]
    expected = per_row_logits(model, full)
    for k, step_logits in enumerate(out.logits):
        for r, row in enumerate(rows):
            assert_logits(step_logits[r], expected[r][len(row) + k - 1], f"inputs_embeds: step {k} row {r}")


@pytest.mark.parametrize("old_name", ["past_key_values", "cache_params"])
@pytest.mark.parametrize("classifier", [HamiltonianTransformerForSequenceClassification, H3ForSequenceClassification])
@torch.no_grad()
def test_sequence_classifiers_take_the_cache_under_its_old_names(classifier, old_name):
    """transformers' generic classification forward renames only `past_key_values` and passes `cache=None` on: a
    cache given as `cache_params` must still reach the base model, not be dropped beside that None."""
    config_class = H3Config if classifier is H3ForSequenceClassification else HamiltonianTransformerConfig
    torch.manual_seed(0)
    model = classifier(config_class.from_preset("tiny", pad_token_id=0)).eval()
    ids = torch.randint(1, VOCAB, (2, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old names are deprecated from transformers 5.24 on
        prefix = model(ids[:, :4], use_cache=True)
        cache = output_cache(prefix)
        out = model(ids[:, 4:], use_cache=True, **{old_name: cache})
    assert output_cache(out) is cache
    torch.testing.assert_close(out.logits, model(ids, use_cache=False).logits, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["hamiltonian-leapfrog", "h3-hybrid"])
@torch.no_grad()
def test_old_cache_keyword_gives_the_same_result_and_warns_where_transformers_renamed_it(name):
    model = build(name)
    ids = torch.randint(1, VOCAB, (2, 7))
    prefix = model(ids[:, :5], use_cache=True)
    new_name = model(ids[:, 5:], cache=output_cache(prefix), use_cache=True).logits
    prefix = model(ids[:, :5], use_cache=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old_name = model(ids[:, 5:], past_key_values=output_cache(prefix), use_cache=True).logits
    assert torch.equal(new_name, old_name)
    prefix = model(ids[:, :5], use_cache=True)
    with warnings.catch_warnings(record=True):  # Mamba's old name: taken as the cache, never dropped into **kwargs
        warnings.simplefilter("always")
        mamba_name = model(ids[:, 5:], cache_params=output_cache(prefix), use_cache=True).logits
    assert torch.equal(new_name, mamba_name)
    deprecations = [w for w in caught if issubclass(w.category, FutureWarning) and "past_key_values" in str(w.message)]
    if CACHE_FIELD == "cache":  # transformers >= 5.24: deprecated there, so deprecated here, the same way
        assert deprecations and "Use `cache` instead" in str(deprecations[0].message)
    else:  # older releases still pass `past_key_values` themselves: no warning for what generate() does
        assert not deprecations


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name", ["hamiltonian-leapfrog", "h3-pure", "h3-hybrid"])
def test_generate_and_its_outputs_emit_no_deprecation_warning(name):
    model = build(name)
    logging.Logger.warning_once.cache_clear()  # transformers warns once per message and process
    records = _Records()
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = model.generate(torch.randint(1, VOCAB, (2, 5)), max_new_tokens=3, do_sample=False, pad_token_id=0,
                                 return_dict_in_generate=True)
            output_cache(out)
            model(out.sequences, use_cache=True)
    finally:
        library_logger.removeHandler(records)
    messages = [str(w.message) for w in caught] + records.messages
    assert not [m for m in messages if "deprecated" in m], messages
