"""A model's own chat template on the scratch backend: a tiny random Llama whose tokenizer has
ChatML's special tokens and a chat template (in tokenizer_config.json, or in GGUF metadata)
renders messages exactly as transformers' ``apply_chat_template``, stops at its end-of-turn
token, keeps constrained decoding valid, and refuses a hostile template by its limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from tokenizers import Tokenizer as HFTokenizer

import promptkit as pk
from promptkit.backends._base import GenerationConfig
from promptkit.backends._chat_templates import ChatTemplate
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.errors import TemplateError

from .conftest import MINI_TOKENIZER
from .test_gguf import write_gguf
from .test_llama import SHAPE

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Who is Olu Bakare? <|im_end|> is text here."},
    {"role": "assistant", "content": "A neighbour."},
    {"role": "user", "content": "Where from?"},
]


def make_chat_llama(folder: Path, template: str | None = CHATML, **shape: int) -> Path:
    """A random Llama with promptkit-mini's tokenizer plus ``<|im_start|>``/``<|im_end|>``
    (its end of turn and end of text), and ``template`` in tokenizer_config.json; ``shape``
    overrides :data:`SHAPE`'s sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = HFTokenizer.from_file(str(MINI_TOKENIZER))
    tokenizer.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    end_of_turn = tokenizer.token_to_id("<|im_end|>")
    settings = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"}
    if template is not None:
        settings["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        bos_token_id=tokenizer.token_to_id("<|endoftext|>"),
        eos_token_id=end_of_turn,
        **{**SHAPE, **shape},
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return make_chat_llama(tmp_path_factory.mktemp("chat-llama"))


@pytest.fixture(scope="module")
def chat_backend(chat_folder):
    backend = pk.get_backend(f"scratch:{chat_folder}", device="cpu")
    assert isinstance(backend, ScratchBackend)
    return backend


def reference_ids(folder: Path) -> list[int]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if not isinstance(ids, list) else ids)


def test_rendered_prompt_ids_equal_transformers_apply_chat_template(chat_backend, chat_folder):
    assert chat_backend.capabilities.chat
    ids = chat_backend._chat_ids(MESSAGES)
    assert ids == reference_ids(chat_folder)
    im_start = chat_backend.tokenizer.encode_with_special_tokens("<|im_start|>")
    assert len(im_start) == 1 and ids.count(im_start[0]) == 5  # 4 messages + the assistant turn
    opened = chat_backend.tokenizer.encode_with_special_tokens("<|im_start|>assistant\n")
    assert ids[-len(opened) :] == opened


def test_generation_from_messages_ends_at_the_end_of_turn_token(chat_backend):
    end_of_turn = chat_backend.tokenizer.eot_id
    assert end_of_turn == chat_backend.tokenizer.encode_with_special_tokens("<|im_end|>")[0]
    weight = chat_backend.model.output_matrix()  # (C, vocab), a view of the output layer
    free = chat_backend.generate(MESSAGES, GenerationConfig(max_tokens=5))
    saved = weight[:, end_of_turn].clone()
    with torch.no_grad():  # <|im_end|> becomes the most likely token everywhere
        weight[:, end_of_turn] = weight[:, end_of_turn] + 1e4 * torch.sign(
            chat_backend.model(torch.tensor([chat_backend._chat_ids(MESSAGES)]))[0, -1]
        )
    try:
        completion = chat_backend.generate(MESSAGES, GenerationConfig(max_tokens=30))
    finally:
        with torch.no_grad():
            weight[:, end_of_turn] = saved
    assert free.usage.completion_tokens == 5  # the untouched random model does not stop
    assert completion.finish_reason == "stop"
    assert completion.usage.completion_tokens == 0 and completion.text == ""
    assert completion.usage.prompt_tokens == len(chat_backend._chat_ids(MESSAGES))


def test_streaming_messages_gives_the_generated_text(chat_backend):
    config = GenerationConfig(max_tokens=8)
    assert "".join(chat_backend.stream(MESSAGES, config)) == (
        chat_backend.generate(MESSAGES, config).text
    )


def test_samples_of_messages_drawn_together_equal_each_drawn_alone(chat_backend):
    config = GenerationConfig(max_tokens=8, temperature=1.0)
    together = chat_backend.generate_samples(MESSAGES, config, [1, 2, 3])
    alone = [chat_backend.generate(MESSAGES, config.replace(seed=s)) for s in (1, 2, 3)]
    assert [(c.text, c.usage) for c in together] == [(c.text, c.usage) for c in alone]
    assert together[0].usage.prompt_tokens == len(chat_backend._chat_ids(MESSAGES))


def test_constrained_json_answer_from_messages_is_valid(chat_backend):
    from pydantic import BaseModel

    from promptkit._grammar import grammar_for
    from promptkit._parsing import output_spec

    class Person(BaseModel):
        name: str
        age: int

    config = GenerationConfig(max_tokens=40, grammar=grammar_for(output_spec(Person)))
    completion = chat_backend.generate(MESSAGES, config)
    Person.model_validate_json(completion.text)
    assert completion.usage.prompt_tokens == len(chat_backend._chat_ids(MESSAGES))


def test_hostile_chat_template_is_a_template_error_naming_the_limit():
    loop = "{% for i in range(10**5) %}{% for j in range(10**5) %}x{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError, match="max_steps"):
        ChatTemplate(loop).render(MESSAGES)
    with pytest.raises(TemplateError, match="max_length"):
        ChatTemplate("{{ 'x' * 10**9 }}").render(MESSAGES)
    with pytest.raises(TemplateError, match="unsafe"):
        ChatTemplate("{{ messages.__class__.__mro__ }}").render(MESSAGES)


def test_a_template_that_refuses_the_messages_says_so():
    refusing = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
    )
    with pytest.raises(TemplateError, match="refused the messages: no system"):
        ChatTemplate(refusing).render(MESSAGES)
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for %}")


def test_model_without_a_template_still_flattens(tmp_path):
    backend = pk.get_backend(f"scratch:{make_chat_llama(tmp_path, None)}", device="cpu")
    assert not backend.capabilities.chat
    seen: list[str] = []
    complete = backend._complete
    backend._complete = lambda text, config: seen.append(text) or complete(text, config)  # type: ignore[method-assign]
    backend.generate(MESSAGES[1:2], GenerationConfig(max_tokens=2))
    assert seen and "<|im_start|>" not in seen[0] and "Olu Bakare" in seen[0]


def test_chat_template_false_keeps_flattening(chat_folder):
    backend = pk.get_backend(f"scratch:{chat_folder}", device="cpu", chat_template=False)
    assert not backend.capabilities.chat
    assert isinstance(backend, ScratchBackend) and backend.chat_template is None
    templated = pk.get_backend(f"scratch:{chat_folder}", device="cpu")
    assert templated.cache_identity()["chat_template"] == CHATML  # cached answers differ
    assert backend.cache_identity() != templated.cache_identity()


def test_gguf_metadata_chat_template_renders_like_the_folder(chat_folder, tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(chat_folder, path, {"*": Q.F32}, chat_template=CHATML)
    assert GGUFReader(str(path)).fields["tokenizer.chat_template"].contents() == CHATML
    backend = pk.get_backend(f"scratch:{path}", device="cpu")
    assert isinstance(backend, ScratchBackend) and backend.capabilities.chat
    assert backend._chat_ids(MESSAGES) == reference_ids(chat_folder)
    assert backend.tokenizer.eot_id == backend.tokenizer.encode_with_special_tokens("<|im_end|>")[0]
