"""Bounds from the inputs and spans under constrained decoding: random weights stay inside them."""

from __future__ import annotations

from pathlib import Path

import pytest

import promptkit as pk
from promptkit._outputs import has_letter_or_digit
from promptkit.backends import GenerationConfig

from .conftest import make_hf_gpt2

pytest.importorskip("llguidance")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory):
    """A random GPT-2 with room for the bundled prompts (a few hundred tokens)."""
    folder: Path = make_hf_gpt2(tmp_path_factory.mktemp("bounded-gpt2"), n_positions=1024)
    return pk.get_backend(f"scratch:{folder}", device="cpu")


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_multiple_choice_never_decodes_an_index_past_the_last_answer(scratch, count, seed):
    prompt = pk.load_prompt("multiple_choice")
    inputs = {
        "context": "It rained all night.",
        "question": "What got wet?",
        "answers": ["the road", "the moon", "the sun"][:count],
    }
    config = GenerationConfig(max_tokens=4, temperature=1.5, seed=seed)
    result = prompt.run(inputs, backend=scratch, shots=0, config=config, max_attempts=1)
    assert result.constrained and len(result.attempts) == 1
    assert 0 <= result.output < count
    grammar = prompt.constraint(scratch, inputs=inputs)
    assert grammar is not None and grammar.matches(str(count - 1))
    assert not grammar.matches(str(count)) and not grammar.matches(str(count + 10))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_span_decoded_from_punctuation_still_holds_a_word(scratch, seed):
    text = '. , ; : ! ? " - ( ) . , Ana ; : ! ? . , -- ... !!'
    prompt = pk.load_prompt("extract")
    config = GenerationConfig(max_tokens=128, temperature=1.5, seed=seed)
    result = prompt.run({"text": text}, backend=scratch, config=config, max_attempts=1)
    assert result.constrained and len(result.attempts) == 1
    assert result.output.name in text and has_letter_or_digit(result.output.name)
    assert result.output.city is None or has_letter_or_digit(result.output.city)
