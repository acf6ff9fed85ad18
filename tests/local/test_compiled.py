"""``compile=True`` on scratch backends: the decoding steps after the prompt run through
``torch.compile`` (see ``promptkit/backends/scratch/_compiled.py``). The option's checks are
fast tests; compiling takes tens of seconds per graph even for a tiny model, so the tests that
compile are slow ones."""

from __future__ import annotations

import os
import re
import shutil
import warnings

import pytest
import torch
from pydantic import BaseModel, Field

import promptkit as pk
from promptkit._grammar import grammar_for
from promptkit._parsing import output_spec
from promptkit.backends._base import GenerationConfig
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.backends.scratch._compiled import check_compilable
from promptkit.backends.scratch._reduce import reduce_precision
from promptkit.backends.scratch._spec import _split_compile
from promptkit.backends.scratch._tokenizer import Tokenizer
from promptkit.backends.scratch.llama import Llama, LlamaConfig
from promptkit.errors import BackendError, ConfigurationError

from .conftest import MINI_TOKENIZER

SHAPE = dict(
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    n_embd=64,
    head_dim=16,
    n_inner=128,
    context_length=128,
)  # with the tokenizer's vocabulary


# What inductor looks for (``$CXX``, else g++): tests that compile skip on a machine without it
needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="no C++ compiler for torch.compile's CPU kernels (install g++ or set CXX)",
)


class Record(BaseModel):
    name: str = Field(max_length=8)
    count: int


def tiny_backend(precision: str, seed: int, compile: bool) -> ScratchBackend:
    """A random two-layer Llama in ``precision`` with promptkit-mini's tokenizer."""
    tokenizer = Tokenizer.from_folder(MINI_TOKENIZER.parent)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, **SHAPE)
    model = Llama(config).eval()
    with torch.no_grad():  # norm weights away from ones, so that a misplaced one shows
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    reduce_precision(model, precision)
    return ScratchBackend(model, tokenizer, compile=compile)


def test_the_compile_option_must_be_a_bool():
    with pytest.raises(ConfigurationError, match="compile must be true or false, got str 'yes'"):
        pk.get_backend("scratch:/no/such/folder", compile="yes")
    with pytest.raises(ConfigurationError, match="compile must be true or false, got int 1"):
        tiny_backend("float32", 0, compile=1)  # type: ignore[arg-type]


def test_compiling_runs_on_the_cpu_only():
    with pytest.raises(ConfigurationError, match="runs on the CPU only .* on cuda"):
        check_compilable(torch.device("cuda"))


@needs_compiler
def test_a_cpu_with_a_cpp_compiler_can_compile():
    check_compilable(torch.device("cpu"))


def test_compiling_without_a_cpp_compiler_says_what_to_install(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("promptkit-no-such-compiler",))
    with pytest.raises(ConfigurationError, match="needs a C.. compiler .*install g.. or clang"):
        check_compilable(torch.device("cpu"))
    with pytest.raises(ConfigurationError, match="needs a C.. compiler"):
        pk.get_backend("scratch:/no/such/folder@int4+compile", device="cpu")  # before loading


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("model@int4+compile", ("model@int4", True)),
        ("model@compile+int4", ("model@int4", True)),
        ("model@compile", ("model", True)),
        ("model@int4", ("model@int4", False)),
        ("model", ("model", False)),
        ("model@int4+fast", ("model@int4+fast", False)),  # split_spec_dtype refuses it
    ],
)
def test_the_spec_asks_to_compile_after_the_at(spec, expected):
    assert _split_compile(spec, False) == expected


@pytest.mark.parametrize(
    ("spec", "meant"),
    [
        ("model+compile", "scratch:model@compile"),
        ("model+int4+compile", "scratch:model@int4+compile"),
    ],
)
def test_compile_without_the_at_says_where_it_goes(spec, meant):
    with pytest.raises(ConfigurationError, match=f"goes after an '@': {re.escape(meant)}$"):
        pk.get_backend(f"scratch:{spec}", device="cpu")  # not looked up anywhere


def test_an_unknown_word_after_the_at_names_compile_among_the_choices():
    with pytest.raises(ConfigurationError, match=r"unknown dtype 'int4\+fast'.*\+compile"):
        pk.get_backend("scratch:/no/such/folder@int4+fast", device="cpu")


@needs_compiler
@pytest.mark.parametrize(
    ("suffix", "name"),
    [
        ("@int4+compile", "@int4+compile"),
        ("@compile+int4", "@int4+compile"),
        ("@compile", "@compile"),
    ],
)
def test_a_compiled_backend_s_name_says_so_as_its_spec_would(suffix, name):
    from promptkit.models import mini_path

    if mini_path() is None:
        pytest.skip("this copy of promptkit ships no promptkit-mini")
    backend = pk.get_backend(f"scratch:{suffix}", device="cpu")  # compiles nothing yet
    assert backend.name == f"scratch:promptkit-mini{name}"


def test_warming_up_a_backend_that_does_not_compile_does_nothing():
    said: list[str] = []
    backend = tiny_backend("float32", 0, compile=False)
    backend.warm_up(said.append)
    pk.get_backend("scripted").warm_up(said.append)
    assert said == []


@needs_compiler
def test_a_compiled_backend_has_its_own_cache_identity():
    """Compiled kernels round differently, so cached responses must not be shared."""
    compiled = tiny_backend("float32", 0, compile=True)  # compiles nothing until a step
    eager = tiny_backend("float32", 0, compile=False)
    assert compiled.cache_identity()["compiled"] is True
    assert eager.cache_identity()["compiled"] is False


@needs_compiler
def test_a_failed_compilation_is_a_backend_error_that_says_how_to_go_on(monkeypatch):
    with warnings.catch_warnings():  # PyTorch's own, on importing inductor
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._inductor.compile_fx as inductor

    def failing(*args, **kwargs):
        raise RuntimeError("no kernel for this")

    monkeypatch.setattr(inductor, "compile_fx", failing)
    backend = tiny_backend("float32", 0, compile=True)
    prompt = backend.tokenizer.encode("Once upon a time")
    with pytest.raises(BackendError, match="compiling the decoding step failed") as caught:
        backend.generate_ids([prompt], GenerationConfig(max_tokens=3))
    assert "no kernel for this" in str(caught.value)
    assert "drop +compile from the spec, or pass compile=False" in str(caught.value)
    assert isinstance(caught.value.__cause__, torch._dynamo.exc.TorchDynamoException)


def teacher_forced(backend: ScratchBackend, rows: torch.Tensor, compiled: bool) -> torch.Tensor:
    """Hidden states of ``rows``' last 6 positions, one step at a time after a prompt pass,
    through the compiled step or the model; rows are left-padded as the backend pads them."""
    model = backend.model
    batch, total = rows.shape
    # one position more than fed, as in generation, where neither the mask nor the cache is
    # ever filled to its end by a step (a full one would take another graph)
    key_valid = torch.ones(batch, total + 1, dtype=torch.bool)
    key_valid[0, :3] = False  # the first row's prompt is 3 tokens shorter
    positions = (key_valid.cumsum(-1) - 1).clamp(min=0)
    cache = model.new_cache(batch, total + 1)
    out = []
    with torch.inference_mode():
        prompt = total - 6
        model(
            rows[:, :prompt],
            positions=positions[:, :prompt],
            key_valid=key_valid[:, :prompt],
            cache=cache,
        )
        for i in range(prompt, total):
            step = backend.compiled_step if compiled else model
            assert step is not None
            hidden = step(
                rows[:, i : i + 1],
                positions=positions[:, i : i + 1],
                key_valid=key_valid[:, : i + 1],
                cache=cache,
            )
            out.append(hidden[:, -1].float())
    return torch.stack(out, 1)


@pytest.mark.slow
@needs_compiler
def test_compiled_steps_give_the_model_s_hidden_states():
    """int4: one row and a padded batch of three, each against the eager model on the same
    weights (the compiled products round bfloat16 differently, hence the tolerance)."""
    from torch._dynamo.utils import counters

    backend = tiny_backend("int4", 0, compile=True)
    vocab = backend.model.config.vocab_size
    rows = torch.randint(0, vocab, (3, 16), generator=torch.Generator().manual_seed(1))
    graphs = counters["stats"]["unique_graphs"]
    for batch in (rows[:1], rows):
        expected = teacher_forced(backend, batch, compiled=False)
        got = teacher_forced(backend, batch, compiled=True)
        assert (got - expected).abs().max().item() < 0.1 * expected.abs().max().item()
    assert counters["stats"]["unique_graphs"] == graphs + 2  # one a batch kind, none eager


@pytest.mark.slow
@needs_compiler
def test_two_models_of_one_shape_each_compile_their_own_weights():
    """The weights are frozen into the compiled graph: a second model of the same shape in the
    same process must not run the first one's."""
    first = tiny_backend("int4", 0, compile=True)
    second = tiny_backend("int4", 1, compile=True)
    vocab = first.model.config.vocab_size
    rows = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(2))
    own = [teacher_forced(b, rows, compiled=False) for b in (first, second)]
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    got = [teacher_forced(b, rows, compiled=True) for b in (first, second)]
    scale = own[0].abs().max().item()
    assert (own[0] - own[1]).abs().max().item() > 0.5 * scale  # the two models differ
    for mine, expected in zip(got, own, strict=True):
        assert (mine - expected).abs().max().item() < 0.1 * scale
    assert counters["stats"]["unique_graphs"] == graphs + 2  # one each: none ran eager


@pytest.mark.slow
@needs_compiler
def test_compiled_generation_equals_eager_generation_in_float32():
    """Through ``generate_ids``: batches of different lengths (left padding), rows that finish
    early and leave the batch, and one prompt alone; float32's compiled kernels give the same
    greedy tokens."""
    from torch._dynamo.utils import counters

    compiled = tiny_backend("float32", 3, compile=True)
    eager = ScratchBackend(compiled.model, compiled.tokenizer)
    graphs = counters["stats"]["unique_graphs"]
    said: list[str] = []
    compiled.warm_up(said.append)  # compiles both graphs now
    assert counters["stats"]["unique_graphs"] == graphs + 2
    assert said == [
        "scratch: compiling the decoding steps, once per process (minutes the first time; "
        "see the README's 'Compiled decoding steps')"
    ]
    prompts = [compiled.tokenizer.encode(t) for t in ("Once upon a time", "The cat", "A")]
    plain, stopping = GenerationConfig(max_tokens=12), GenerationConfig(max_tokens=12, stop="e")
    # a grammar: forced tokens are fed several at a time (eagerly), the others one at a time
    record = grammar_for(output_spec(Record))
    constrained = GenerationConfig(max_tokens=40, grammar=record)
    cases = [(prompts, plain), (prompts, stopping), (prompts[:1], plain), (prompts, constrained)]
    for batch, config in cases:
        ids, reasons = compiled.generate_ids(batch, config)
        assert (ids, reasons) == eager.generate_ids(batch, config)
        if config is constrained:
            for row in ids:
                assert record is not None and record.matches(compiled.tokenizer.decode(row))
        if config is stopping:  # a row left the batch after its first token
            assert reasons[0] == "stop" and len(ids[0]) == 1 and len(ids[1]) == 12
    assert counters["stats"]["unique_graphs"] == graphs + 2  # none since: rows leaving, too
