"""Tools on local backends with random weights: decoding is held to a valid call (a tool's name
from the list, its arguments by its schema); a chat template with a tools slot gets the tools
there, exactly as transformers renders them; the hf backend emulates tools the same way."""

from __future__ import annotations

from typing import Literal

import pytest
import transformers

import promptkit as pk
from promptkit.backends._base import GenerationConfig
from promptkit.backends.scratch._backend import ScratchBackend

from .conftest import make_hf_gpt2
from .test_chat_templates import make_chat_llama

# A Qwen2.5-style template: the tools in a system block, calls as <tool_call> JSON.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:\n{% for tool in tools %}"
    "{{ tool.function.name }}: {{ tool.function.description }}\n{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{% for call in message.tool_calls %}<tool_call>{{ call.function.name }}"
    "{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>{{ message.content }}"
    "</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def get_weather(city: Literal["Oslo", "Lima"], unit: Literal["C", "F"] = "C") -> str:
    """Get today's weather in a city."""
    return f"12 {unit} in {city}"


def convert(amount: Literal[1, 2, 3], to: Literal["EUR", "USD"]) -> str:
    """Convert an amount of money."""
    return f"{amount} {to}"


TOOLS = [pk.Tool(get_weather), pk.Tool(convert)]
PROMPT = pk.Prompt(query="What is the weather in {{ city }}?")
CONFIG = GenerationConfig(max_tokens=80)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A random GPT-2 with room for the tools in its prompt."""
    return make_hf_gpt2(
        tmp_path_factory.mktemp("tools-gpt2"), mini_tokenizer=True, n_positions=1024
    )


@pytest.fixture(scope="module")
def backend(gpt2_folder):
    return pk.get_backend(f"scratch:{gpt2_folder}", device="cpu")


@pytest.fixture(scope="module")
def tools_folder(tmp_path_factory):
    return make_chat_llama(  # room for the tools' description in the prompt
        tmp_path_factory.mktemp("tools-llama"), TOOLS_TEMPLATE, max_position_embeddings=1024
    )


@pytest.fixture(scope="module")
def tools_backend(tools_folder):
    backend = pk.get_backend(f"scratch:{tools_folder}", device="cpu")
    assert isinstance(backend, ScratchBackend)
    return backend


@pytest.mark.timeout(120)
@pytest.mark.parametrize("choice", ["required", "convert"])
def test_a_random_model_makes_a_valid_call(backend, choice):
    result = PROMPT.run(
        {"city": "Oslo"}, backend=backend, tools=TOOLS, tool_choice=choice, config=CONFIG
    )
    (call,) = result.tool_calls
    assert len(result.attempts) == 1
    assert call.name in ("get_weather", "convert") if choice == "required" else call.name == choice
    assert isinstance(call.arguments, call.tool.arguments_type)
    assert result.text.startswith("<tool_call>")  # the raw text is kept


@pytest.mark.timeout(120)
def test_run_tools_on_a_random_model_runs_the_call_and_goes_on(backend):
    try:
        result = PROMPT.run(
            {"city": "Oslo"},
            backend=backend,
            tools=TOOLS,
            tool_choice="required",
            run_tools=True,
            max_steps=2,
            config=CONFIG,
        )
        steps, attempts = result.tool_steps, result.attempts
        assert isinstance(result.output, str)  # it answered after the results
    except pk.errors.MaxStepsError as error:  # or kept calling: a random model may
        steps, attempts = error.steps, error.attempts
    first = steps[0]
    assert first.results[0] == first.calls[0].run() and first.texts == first.results
    assert len(attempts) == len(steps) + 1


def test_the_templates_tools_slot_gets_the_tools_as_transformers_renders_them(
    tools_backend, tools_folder
):
    assert tools_backend.capabilities.tool_template
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    specs = [t.spec.as_openai() for t in TOOLS]
    config = GenerationConfig(tools=tuple(t.spec for t in TOOLS))
    ids = tools_backend._chat_ids(messages, config)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tools_folder)
    expected = tokenizer.apply_chat_template(
        messages, tools=specs, add_generation_prompt=True, tokenize=True
    )
    assert ids == list(expected["input_ids"] if not isinstance(expected, list) else expected)
    assert "Tools:\nget_weather: Get today's weather in a city." in tokenizer.decode(ids)


@pytest.mark.timeout(120)
def test_a_call_from_the_templates_slot_is_valid_and_rounds_render_with_it(tools_backend):
    result = PROMPT.run(
        {"city": "Oslo"},
        backend=tools_backend,
        tools=TOOLS,
        tool_choice="get_weather",
        config=CONFIG,
    )
    (call,) = result.tool_calls
    assert call.name == "get_weather" and call.arguments.city in ("Oslo", "Lima")
    history = [m.as_chat() for m in result.messages]
    history.append({"role": "tool", "content": "12 C", "tool_call_id": call.id})
    text = tools_backend.chat_template.render(history)
    assert "<tool_call>get_weather<|im_end|>" in text and "<tool_response>12 C" in text


def test_a_template_that_does_not_read_tools_has_no_tools_slot(tmp_path):
    folder = make_chat_llama(tmp_path / "plain")
    backend = pk.get_backend(f"scratch:{folder}", device="cpu")
    assert backend.capabilities.chat and not backend.capabilities.tool_template


@pytest.mark.timeout(120)
def test_the_hf_backend_emulates_tools_too(gpt2_folder):
    backend = pk.get_backend(f"hf:{gpt2_folder}", device="cpu")
    result = PROMPT.run(
        {"city": "Lima"}, backend=backend, tools=TOOLS, tool_choice="required", config=CONFIG
    )
    assert isinstance(result.tool_calls[0].arguments, result.tool_calls[0].tool.arguments_type)
