"""A model's own chat template on the hf backend: the same tiny random Llama as the scratch
backend's chat-template tests; messages render in promptkit's sandbox to the ids of
transformers' ``apply_chat_template``, generation stops at the end-of-turn token, and the
answers equal the scratch backend's on the same weights."""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as Q
from pydantic import BaseModel

import promptkit as pk
from promptkit._grammar import grammar_for
from promptkit._parsing import output_spec
from promptkit.backends._base import GenerationConfig
from promptkit.backends._hf import HFBackend

from .test_chat_templates import CHATML, MESSAGES, make_chat_llama, reference_ids
from .test_gguf import write_gguf


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return make_chat_llama(tmp_path_factory.mktemp("hf-chat-llama"))


@pytest.fixture(scope="module")
def hf_chat(chat_folder):
    backend = pk.get_backend(f"hf:{chat_folder}", device="cpu")
    assert isinstance(backend, HFBackend)
    return backend


def test_messages_render_to_transformers_apply_chat_template_ids(hf_chat, chat_folder):
    assert hf_chat.capabilities.chat
    assert hf_chat._chat_ids(MESSAGES) == reference_ids(chat_folder)


def test_answers_equal_the_scratch_backend_on_the_same_weights(hf_chat, chat_folder):
    scratch = pk.get_backend(f"scratch:{chat_folder}", device="cpu")
    config = GenerationConfig(max_tokens=6)
    ours = hf_chat.generate(MESSAGES, config)
    theirs = scratch.generate(MESSAGES, config)
    assert ours.text == theirs.text
    assert ours.usage == theirs.usage
    assert ours.usage.prompt_tokens == len(reference_ids(chat_folder))


def test_generation_stops_at_the_end_of_turn_token(hf_chat):
    end_of_turn = hf_chat.tokenizer.eot_id
    assert hf_chat.tokenizer.hf.convert_ids_to_tokens(end_of_turn) == "<|im_end|>"
    weight = hf_chat.model.get_output_embeddings().weight
    saved = weight.data.clone()
    try:  # <|im_end|> becomes the only token with a non-zero logit
        weight.data.zero_()
        weight.data[end_of_turn] = 1.0
        completion = hf_chat.generate(MESSAGES, GenerationConfig(max_tokens=20))
    finally:
        weight.data.copy_(saved)
    assert completion.finish_reason == "stop" and completion.text == ""
    assert completion.usage.completion_tokens == 0


def test_streamed_messages_give_the_generated_text(hf_chat):
    config = GenerationConfig(max_tokens=8)
    assert "".join(hf_chat.stream(MESSAGES, config)) == hf_chat.generate(MESSAGES, config).text


def test_constrained_answer_to_messages_is_valid(hf_chat):
    class Person(BaseModel):
        name: str
        age: int

    config = GenerationConfig(max_tokens=40, grammar=grammar_for(output_spec(Person)))
    Person.model_validate_json(hf_chat.generate(MESSAGES, config).text)


def test_chat_template_false_flattens_and_changes_the_cache_identity(hf_chat, chat_folder):
    flat = pk.get_backend(f"hf:{chat_folder}", device="cpu", chat_template=False)
    assert isinstance(flat, HFBackend) and flat.chat_template is None
    assert not flat.capabilities.chat
    assert hf_chat.cache_identity()["chat_template"] == CHATML
    assert flat.cache_identity() != hf_chat.cache_identity()
    seen: list[str] = []
    complete = flat._complete
    flat._complete = lambda text, config: seen.append(text) or complete(text, config)  # type: ignore[method-assign]
    flat.generate(MESSAGES[1:2], GenerationConfig(max_tokens=2))
    assert seen and "<|im_start|>" not in seen[0] and "Olu Bakare" in seen[0]


def test_a_model_without_a_template_flattens(tmp_path):
    backend = pk.get_backend(f"hf:{make_chat_llama(tmp_path, None)}", device="cpu")
    assert isinstance(backend, HFBackend)
    assert not backend.capabilities.chat and backend.chat_template is None


def test_gguf_metadata_template_on_hf_renders_like_the_folder(chat_folder, tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(chat_folder, path, {"*": Q.F32}, chat_template=CHATML)
    backend = pk.get_backend(f"hf:{path}", device="cpu")
    assert isinstance(backend, HFBackend) and backend.capabilities.chat
    assert backend._chat_ids(MESSAGES) == reference_ids(chat_folder)
