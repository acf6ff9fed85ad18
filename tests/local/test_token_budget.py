"""Constrained decoding keeps every answer inside its token budget, whatever the model prefers.

Adversaries: the counterexamples hypothesis found (test_constrained.py), and a model that
prefers the shortest tokens, so every token it may choose costs the budget most.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import promptkit as pk
from promptkit._grammar import grammar_for
from promptkit._llg import llg_tokenizer
from promptkit._parsing import output_spec
from promptkit._schema import type_from_schema
from promptkit.backends import GenerationConfig, _masking
from promptkit.backends._masking import NEAR, SLACK, TokenMasker
from promptkit.errors import BackendError, ConstraintError

from .conftest import GPT2_TOKENIZER, make_hf_gpt2, object_schema

pytest.importorskip("llguidance")

BACKENDS = ["scratch", "hf"]
EMAIL = "^[a-z]+@[a-z]+\\.com$"


@pytest.fixture(scope="module")
def gpt2_scratch(tmp_path_factory: pytest.TempPathFactory):
    """test_constrained.py's random GPT-2 (the same weights: seeded) on the scratch backend."""
    folder = make_hf_gpt2(tmp_path_factory.mktemp("wide-gpt2"), n_positions=1024)
    return pk.get_backend(f"scratch:{folder}", device="cpu")


# Found by test_constrained.py::test_generated_schemas_always_give_valid_answers with GPT-2's
# tokenizer (hypothesis, max_examples=30).
BUDGET_COUNTEREXAMPLE = object_schema(
    {
        "a": {
            "anyOf": [
                object_schema(
                    {
                        "a": {"type": "string"},
                        "b": {"type": "string"},
                        "x_1": {"type": "string"},
                        "name": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                    },
                    [False, False, True, True],
                ),
                {"type": "null"},
            ]
        },
        "kind": {"type": "boolean"},
        "name": object_schema(
            {
                "a": {
                    "type": "array",
                    "items": {"type": "number", "minimum": 9.5, "maximum": 10.5},
                    "minItems": 2,
                    "maxItems": 2,
                },
                "b": {"type": "string"},
            },
            [True, True],
        ),
    },
    [True, False, True, False],
)


@pytest.mark.skipif(
    not (GPT2_TOKENIZER / "tokenizer.json").is_file(),
    reason="the counterexample was found with GPT-2's tokenizer (../shared/data/gpt2-tokenizer)",
)
def test_a_token_allowed_near_the_budget_keeps_the_ending_it_was_checked_with(gpt2_scratch):
    """With 10 tokens left the ending found was '10,9.5],"b":""}}' (10 tokens). The sampled '1'
    was allowed because '0,10],"b":""}}' fits after it, but the decoder then kept the rest of the
    older ending, '0,9.5],"b":""}}', one token too many: the answer was cut off at max_tokens
    before its two closing braces."""
    spec = output_spec(type_from_schema(BUDGET_COUNTEREXAMPLE, name="Generated"))
    grammar = grammar_for(spec)
    assert grammar is not None
    config = GenerationConfig(max_tokens=80, temperature=1.0, seed=8120, grammar=grammar)
    completion = gpt2_scratch.generate("JSON:", config)
    assert completion.usage.completion_tokens == 80  # the budget is what ended the answer
    assert grammar.matches(completion.text), completion.text
    spec.parse(completion.text)


@pytest.fixture(scope="module")
def mini_tokenizer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random GPT-2 over promptkit-mini's tokenizer (shipped in the package)."""
    return make_hf_gpt2(tmp_path_factory.mktemp("mini-tokenizer-gpt2"), mini_tokenizer=True)


@pytest.fixture(params=BACKENDS)
def shortest_first(request: pytest.FixtureRequest, mini_tokenizer_folder, monkeypatch):
    """That model, on each local backend, made to prefer the shortest tokens: it spells '10' as
    '1', '0' and '{"' as '{', '"', so each token it may choose costs the budget most."""
    backend = pk.get_backend(f"{request.param}:{mini_tokenizer_folder}", device="cpu")
    vocab = backend.model.config.vocab_size
    length = [len(backend.tokenizer.decode([t]).encode()) for t in range(vocab)]
    preference = -torch.tensor(length, dtype=torch.float) + torch.linspace(0, 0.5, vocab)
    if request.param == "scratch":
        monkeypatch.setattr(
            backend.model, "logits", lambda hidden: preference.repeat(hidden.size(0), 1)
        )
    else:
        monkeypatch.setattr(
            backend.model.lm_head,
            "forward",
            lambda hidden: preference.repeat(*hidden.shape[:-1], 1),
        )
    return backend


PAIR = object_schema(
    {
        "a": {
            "type": "array",
            "items": {"type": "number", "minimum": 9.5, "maximum": 10.5},
            "minItems": 2,
            "maxItems": 2,
        }
    },
    [True],
)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_model_that_spells_numbers_out_still_ends_within_the_budget(shortest_first, temperature):
    """Where the ending found has '10' the model writes '1': the guard allows it (an ending fits
    after it) and must then keep that ending, not the rest of the one it had (with
    promptkit-mini's tokenizer, max_tokens 10 and 11 were cut off)."""
    spec = output_spec(type_from_schema(PAIR, name="Pair"))
    grammar = grammar_for(spec)
    assert grammar is not None
    for max_tokens in range(6, 16):
        config = GenerationConfig(
            max_tokens=max_tokens, temperature=temperature, seed=1, grammar=grammar
        )
        try:
            completion = shortest_first.generate("JSON:", config)
        except ConstraintError as exc:
            assert exc.min_tokens is not None and exc.min_tokens > max_tokens
            continue
        assert completion.usage.completion_tokens <= max_tokens
        assert grammar.matches(completion.text), (max_tokens, completion.text)
        assert len(spec.parse(completion.text).a) == 2


EMAILS = object_schema({n: {"type": "string", "pattern": EMAIL} for n in "abc"}, [True] * 3)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_row_of_a_batch_is_guarded_from_its_first_token(shortest_first, temperature):
    """Only the first row's ending was found before generating: the other rows looked far from
    their budget and spelled their first tokens unguarded, so at the smallest max_tokens they
    were cut off short of their closing brace."""
    spec = output_spec(type_from_schema(EMAILS, name="Emails"))
    grammar = grammar_for(spec)
    assert grammar is not None
    with pytest.raises(ConstraintError) as caught:
        shortest_first.generate("JSON:", GenerationConfig(max_tokens=1, grammar=grammar))
    smallest = caught.value.min_tokens
    assert smallest is not None and smallest > NEAR + SLACK  # where an unguarded row started
    for max_tokens in (smallest, smallest + 1):
        config = GenerationConfig(
            max_tokens=max_tokens, temperature=temperature, seed=1, grammar=grammar
        )
        rows = shortest_first.generate_batch(["JSON:", "Emails:", "x"], config)
        for completion in rows:
            assert grammar.matches(completion.text), (max_tokens, completion.text)
            spec.parse(completion.text)


OPTIONAL_EMAILS = object_schema(
    {
        "x": {
            "anyOf": [
                object_schema(
                    {n: {"type": "string", "pattern": EMAIL} for n in "abcd"}, [True] * 4
                ),
                {"type": "null"},
            ]
        }
    },
    [True],
)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_token_far_from_the_budget_cannot_open_more_than_it_can_close(
    shortest_first, temperature
):
    """'null' ends the answer in a few tokens, so the guard was not yet checking tokens one by
    one when the model took '{' and committed to four required e-mail addresses, some 40
    tokens: cut off at most budgets. Every sampled token is now checked to leave room."""
    spec = output_spec(type_from_schema(OPTIONAL_EMAILS, name="Optional"))
    grammar = grammar_for(spec)
    assert grammar is not None
    opened = 0
    for max_tokens in range(8, 60, 3):
        config = GenerationConfig(
            max_tokens=max_tokens, temperature=temperature, seed=1, grammar=grammar
        )
        completion = shortest_first.generate("JSON:", config)
        assert completion.usage.completion_tokens <= max_tokens
        assert grammar.matches(completion.text), (max_tokens, completion.text)
        opened += spec.parse(completion.text).x is not None
    assert opened or temperature > 0  # greedy: the '{' it prefers, wherever the object fits


def test_a_drawn_token_without_room_to_end_is_drawn_again(mini_tokenizer_folder):
    """TokenMasker.sample: after '{"x":' with 10 tokens left, 'null' fits and '{' (four e-mail
    addresses to follow) does not; '{' is drawn again, and with nothing else allowed it is a
    BackendError, never a token that leaves the answer cut off."""
    backend = pk.get_backend(f"scratch:{mini_tokenizer_folder}", device="cpu")
    vocab = backend.model.config.vocab_size
    tokenizer = llg_tokenizer(backend.tokenizer, backend.tokenizer.to_llguidance, vocab)
    grammar = grammar_for(output_spec(type_from_schema(OPTIONAL_EMAILS, name="Optional")))
    assert grammar is not None
    config = GenerationConfig(max_tokens=12, temperature=0, grammar=grammar)
    masker = TokenMasker.for_request(config, tokenizer, batch=1, vocab_size=vocab)
    for token in tokenizer.tokenize_str('{"x":'):
        masker.advance(0, token)
    (brace,) = tokenizer.tokenize_str("{")
    (null,) = tokenizer.tokenize_str("null")
    assert not masker.fits(0, brace) and masker.fits(0, null)
    logits = torch.full((1, vocab), float("-inf"))
    logits[0, brace], logits[0, null] = 5.0, 1.0  # the model prefers '{'
    assert masker.sample(logits, [0], config, None).tolist() == [null]
    assert logits[0, brace] == float("-inf")
    only_brace = torch.full((1, vocab), float("-inf"))
    only_brace[0, brace] = 0.0
    with pytest.raises(BackendError, match="no allowed token leaves room to end the answer"):
        masker.sample(only_brace, [0], config, None)


@pytest.mark.parametrize("schema", [OPTIONAL_EMAILS, PAIR, BUDGET_COUNTEREXAMPLE])
def test_greedy_decoding_masks_lazily_and_takes_the_same_tokens(
    mini_tokenizer_folder, monkeypatch, schema
):
    """Greedy decoding on scratch: a step whose most likely token is allowed computes no mask
    (TokenMasker.apply with lazy=True); the answers are the tokens a full mask at every step
    gives, at every budget (near the budget the guard keeps only candidates that fit; a top token
    that does not fit far from it is the next test's case)."""
    backend = pk.get_backend(f"scratch:{mini_tokenizer_folder}", device="cpu")
    grammar = grammar_for(output_spec(type_from_schema(schema, name="Schema")))
    assert grammar is not None
    masked: list[int] = []  # rows masked, call by call
    mask, apply = TokenMasker._mask, TokenMasker.apply

    def counted(self: TokenMasker, logits: torch.Tensor, rows: list[int]) -> None:
        masked.append(len(rows))
        mask(self, logits, rows)

    monkeypatch.setattr(TokenMasker, "_mask", counted)

    def generate(max_tokens: int, lazy: bool) -> list[int]:
        def chosen(self: TokenMasker, logits: torch.Tensor, rows: list[int], **_: bool) -> None:
            apply(self, logits, rows, lazy=lazy)

        monkeypatch.setattr(TokenMasker, "apply", chosen)
        config = GenerationConfig(max_tokens=max_tokens, temperature=0, grammar=grammar)
        try:
            return backend.generate_ids([backend.tokenizer.encode("JSON:")], config)[0][0]
        except ConstraintError:  # too small a budget for any answer: the same either way
            return []

    skipped = 0
    for max_tokens in range(8, 64, 5):
        masked.clear()
        eager = generate(max_tokens, lazy=False)
        eager_masks = sum(masked)
        masked.clear()
        assert generate(max_tokens, lazy=True) == eager, max_tokens
        skipped += eager_masks - sum(masked)
    assert skipped > 0  # the lazy path did leave steps unmasked


def test_a_row_left_unmasked_is_masked_when_its_top_token_does_not_fit(mini_tokenizer_folder):
    """After '{"x":' with 24 tokens left (too many for the budget guard to check tokens one by
    one), the model prefers '{' (allowed, but four e-mail addresses would follow), then 'a' (not
    allowed there), then 'null'. A lazy apply leaves the row unmasked, since '{' is allowed; when
    '{' does not fit, the row is masked before it is drawn again, so the answer takes 'null'."""
    backend = pk.get_backend(f"scratch:{mini_tokenizer_folder}", device="cpu")
    vocab = backend.model.config.vocab_size
    tokenizer = llg_tokenizer(backend.tokenizer, backend.tokenizer.to_llguidance, vocab)
    grammar = grammar_for(output_spec(type_from_schema(OPTIONAL_EMAILS, name="Optional")))
    assert grammar is not None
    start = tokenizer.tokenize_str('{"x":')
    config = GenerationConfig(max_tokens=len(start) + 24, temperature=0, grammar=grammar)
    masker = TokenMasker.for_request(config, tokenizer, batch=1, vocab_size=vocab)
    for token in start:
        masker.advance(0, token)
    (brace,), (letter,), (null,) = (tokenizer.tokenize_str(s) for s in ("{", "a", "null"))
    logits = torch.zeros((1, vocab))
    logits[0, brace], logits[0, letter], logits[0, null] = 5.0, 3.0, 1.0
    masker.apply(logits, [0], lazy=True)
    assert logits[0, letter] == 3.0  # left unmasked: the top token is allowed
    assert masker.sample(logits, [0], config, None).tolist() == [null]
    assert torch.isinf(logits[0, letter]) and torch.isinf(logits[0, letter + 1])  # all masked


PERSON = object_schema(
    {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
    },
    [True, True, True],
)


@pytest.mark.parametrize(
    ("before", "token"),
    [
        ('{"name":"Ann', '"'),  # the quote that closes the string: the ending began '",'
        ('{"name":"Ann', "a"),  # inside the string: the ending known is unchanged
        ('{"name":"Ann","age":', "4"),  # a digit where the ending began with '0'
        ('{"name":"Ann","age":4,"date":"', "19"),  # digits of a date the ending spelled 0123
    ],
)
def test_a_token_near_the_budget_is_checked_without_searching_for_an_ending(
    mini_tokenizer_folder, monkeypatch, before, token
):
    """Checking whether a token fits the budget searches for a new ending only when neither
    the ending known nor what is left of it once the token took its place ends the answer (a
    search costs about a millisecond; the check, one validation of some tokens). The ending
    recorded for the token is a valid end of the answer that fits the tokens left."""
    backend = pk.get_backend(f"scratch:{mini_tokenizer_folder}", device="cpu")
    vocab = backend.model.config.vocab_size
    tokenizer = llg_tokenizer(backend.tokenizer, backend.tokenizer.to_llguidance, vocab)
    grammar = grammar_for(output_spec(type_from_schema(PERSON, name="Person")))
    assert grammar is not None
    start = tokenizer.tokenize_str(before)
    (chosen,) = tokenizer.tokenize_str(token)
    config = GenerationConfig(max_tokens=len(start) + 30, temperature=0, grammar=grammar)
    masker = TokenMasker.for_request(config, tokenizer, batch=1, vocab_size=vocab)
    for step in start:
        masker.advance(0, step)
    assert masker._ending(masker.rows[0]) is not None  # an ending is known before the token
    searches: list[int] = []
    search = _masking.shortest_ending
    monkeypatch.setattr(_masking, "shortest_ending", lambda *a: searches.append(1) or search(*a))
    assert masker.fits(0, chosen)
    assert searches == []
    tail, ending = masker.rows[0].endings_after[chosen]
    assert tokenizer.decode_bytes(ending) == tail
    after = masker.rows[0].matcher.deep_copy()
    assert after.consume_tokens([chosen, *ending]) and after.is_accepting()
    assert len(ending) <= config.max_tokens - len(start) - 1
