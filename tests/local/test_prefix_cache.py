"""The prefix cache of the scratch backend: prompts that share a start reuse its keys and values
across requests, with the same answers as without the cache (same tokens, the same
log-probabilities within 1e-5) on GPT-2, promptkit-mini's extras (ALiBi, smeared keys, local
convolution) and Llama; bounded by bytes, least recently used evicted, safe across threads."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pytest
import torch

import promptkit as pk
from promptkit._grammar import grammar_for
from promptkit._parsing import output_spec
from promptkit.backends._base import GenerationConfig
from promptkit.backends.scratch._backend import ScratchBackend
from promptkit.backends.scratch._prefix_cache import PrefixCache
from promptkit.backends.scratch.gpt2 import GPT, preset
from promptkit.errors import ConfigurationError

from .conftest import tokenizer_files
from .test_chat_templates import CHATML, make_chat_llama
from .test_llama import make_hf_llama

SHARED = (
    "Decide whether each review is positive or negative.\n\nReview: An absolute joy.\n"
    "Sentiment: positive\n\nReview: The plot made no sense.\nSentiment: negative\n\nReview: "
)
QUERIES = ["Fast delivery, works.", "It broke after two days and support never answered.", "Meh"]
CONFIG = GenerationConfig(max_tokens=6)
TOLERANCE = 1e-5


def pair(backend: ScratchBackend) -> tuple[ScratchBackend, ScratchBackend]:
    """The same model without a prefix cache (the reference) and with one."""
    plain = ScratchBackend(backend.model, backend.tokenizer, prefix_cache_bytes=0)
    cached = ScratchBackend(backend.model, backend.tokenizer)
    for one in (plain, cached):
        one.use_chat_template(backend.chat_template)
    return plain, cached


@pytest.fixture(scope="module", params=["gpt2", "mini", "llama"])
def backends(request, tmp_path_factory, backend):
    if request.param == "gpt2":
        return pair(backend)
    if request.param == "mini":  # ALiBi, smeared keys and the local convolution's inputs
        tokenizer = tokenizer_files(tmp_path_factory.mktemp("mini"), mini=True)
        torch.manual_seed(0)
        config = preset(
            "tiny",
            vocab_size=tokenizer.vocab_size,
            smear_keys=True,
            conv_width=4,
            alibi=True,
            mimetic_init=True,
        )
        return pair(ScratchBackend(GPT(config), tokenizer))
    folder = make_hf_llama(tmp_path_factory.mktemp("llama"), "llama")
    return pair(pk.get_backend(f"scratch:{folder}", device="cpu"))


def traced(backend: ScratchBackend, call: Callable[[], Any]) -> tuple[Any, list[torch.Tensor]]:
    """``call()``'s result and the log-probabilities of every step's next-token logits."""
    steps: list[torch.Tensor] = []
    logits = backend.model.logits

    def recording(hidden: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = logits(hidden)
        steps.append(out.float().log_softmax(-1))
        return out

    backend.model.logits = recording
    try:
        return call(), steps
    finally:
        del backend.model.logits


def assert_same(plain: ScratchBackend, cached: ScratchBackend, call: Callable[[Any], Any]) -> Any:
    """Run ``call`` on both backends: the same result, step log-probabilities within 1e-5,
    and some prompt tokens taken from the cache."""
    reused = cached.prefix_cache.stats().tokens_reused
    expected, expected_steps = traced(plain, lambda: call(plain))
    got, got_steps = traced(cached, lambda: call(cached))
    assert got == expected
    assert len(got_steps) == len(expected_steps)
    for ours, theirs in zip(got_steps, expected_steps, strict=True):
        assert float((ours - theirs).abs().max()) < TOLERANCE
    assert cached.prefix_cache.stats().tokens_reused > reused
    return got


def test_completions_equal_those_without_the_cache(backends):
    plain, cached = backends
    cached.generate(SHARED + "Warm-up review.", CONFIG)
    for query in QUERIES:
        assert_same(plain, cached, lambda b, q=query: b.generate(SHARED + q, CONFIG).text)


def test_a_repeated_prompt_reuses_all_but_its_last_token(backends):
    plain, cached = backends
    prompt = SHARED + "Repeated exactly."
    cached.generate(prompt, CONFIG)
    before = cached.prefix_cache.stats()
    assert_same(plain, cached, lambda b: b.generate(prompt, CONFIG).text)
    after = cached.prefix_cache.stats()
    assert after.tokens_computed - before.tokens_computed == 1
    assert after.tokens_reused - before.tokens_reused == len(cached.tokenizer.encode(prompt)) - 1


def test_left_padded_batch_with_different_cached_lengths(backends):
    plain, cached = backends
    cached.generate(SHARED + QUERIES[0], CONFIG)  # the whole first prompt is cached
    prompts = [
        SHARED + QUERIES[0],  # longest cached part
        SHARED + QUERIES[1],  # the shared start cached, the longest prompt
        SHARED[:40] + "something else entirely",  # a shorter cached start
        "No shared start at all.",  # nothing cached
        "x",  # one token: all padding up to the last column
    ]

    def batch(backend: ScratchBackend) -> list[str]:
        return [c.text for c in backend.generate_batch(prompts, CONFIG)]

    together = assert_same(plain, cached, batch)
    alone = [plain.generate(p, CONFIG).text for p in prompts]
    assert together == alone


def test_a_batch_computes_the_start_its_rows_share_once(backends):
    plain, cached = backends
    cached.prefix_cache.clear()  # cold: nothing of the shared start is cached
    prompts = [SHARED + "Batch row: " + query for query in QUERIES]
    assert_same(plain, cached, lambda b: [c.text for c in b.generate_batch(prompts, CONFIG)])
    encoded = [cached.tokenizer.encode(p) for p in prompts]
    shared = next(i for i, t in enumerate(zip(*encoded, strict=False)) if len(set(t)) > 1)
    longest = max(len(ids) for ids in encoded)
    # the shared start once, then each row's rest (a shorter row's left padding moves its
    # shared start right, so it recomputes as many of those tokens as it has padding)
    rest = sum(len(ids) - shared + (longest - len(ids)) for ids in encoded)
    assert cached.prefix_cache.stats().tokens_computed == shared + rest < sum(map(len, encoded))


def test_streaming_equals_the_completion(backends):
    plain, cached = backends
    cached.generate(SHARED + "Warm-up review.", CONFIG)
    streamed = assert_same(plain, cached, lambda b: "".join(b.stream(SHARED + "Great!", CONFIG)))
    assert streamed == plain.generate(SHARED + "Great!", CONFIG).text


def test_constrained_decoding_to_labels(backends):
    plain, cached = backends
    grammar = grammar_for(output_spec(Literal["positive", "negative"]))
    config = GenerationConfig(max_tokens=4, grammar=grammar)
    cached.generate(SHARED + "Warm-up review.\nSentiment: ", config)
    for query in QUERIES:
        text = assert_same(
            plain, cached, lambda b, q=query: b.generate(SHARED + q + "\nSentiment: ", config).text
        )
        assert text.strip() in ("positive", "negative")


def test_multiple_choice_scores_equal_those_without_the_cache(backends):
    plain, cached = backends
    choices = [" positive", " negative", " neither of the two"]
    cached.score_choices(SHARED + "Warm-up review.\nSentiment:", choices)
    context = SHARED + QUERIES[1] + "\nSentiment:"
    expected = [s for s, _ in plain.score_choices(context, choices)]
    reused = cached.prefix_cache.stats().tokens_reused
    got = [s for s, _ in cached.score_choices(context, choices)]
    assert got == pytest.approx(expected, abs=TOLERANCE)
    assert cached.prefix_cache.stats().tokens_reused > reused


def test_chat_template_prompts_share_the_system_turn(tmp_path):
    folder = make_chat_llama(tmp_path)
    base = pk.get_backend(f"scratch:{folder}", device="cpu")
    assert isinstance(base, ScratchBackend) and base.chat_template is not None
    plain, cached = pair(base)
    system = {"role": "system", "content": "You label reviews as positive or negative. " * 3}
    cached.generate([system, {"role": "user", "content": "Warm-up."}], CONFIG)
    for query in QUERIES:
        messages = [system, {"role": "user", "content": query}]
        assert_same(plain, cached, lambda b, m=messages: b.generate(m, CONFIG).text)
    assert plain.chat_template is not None and plain.chat_template.source == CHATML


def test_changed_weights_are_never_answered_from_old_prefixes(backend):
    model = copy.deepcopy(backend.model)
    plain, cached = pair(ScratchBackend(model, backend.tokenizer))
    cached.generate(SHARED + QUERIES[0], CONFIG)
    with torch.no_grad():
        for parameter in model.h[0].parameters():  # a fine-tuning step, in place
            parameter.mul_(1.5)
    before = cached.prefix_cache.stats()
    expected, expected_steps = traced(plain, lambda: plain.generate(SHARED + QUERIES[1], CONFIG))
    got, got_steps = traced(cached, lambda: cached.generate(SHARED + QUERIES[1], CONFIG))
    assert got.text == expected.text
    for ours, theirs in zip(got_steps, expected_steps, strict=True):
        assert float((ours - theirs).abs().max()) < TOLERANCE
    assert cached.prefix_cache.stats().tokens_reused == before.tokens_reused


def test_concurrent_requests_sharing_a_prefix_get_what_they_get_alone(backend):
    plain, cached = pair(backend)
    prompts = [SHARED + f"Review number {i}: {QUERIES[i % 3]}" for i in range(12)]
    expected = [plain.generate(p, CONFIG).text for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: cached.generate(p, CONFIG).text, prompts))
    assert got == expected
    stats = cached.prefix_cache.stats()
    assert stats.lookups == 12 and stats.hits >= 8


def test_served_concurrent_requests_share_the_prefix(backend):
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from servers import serve_in_thread

    from promptkit.server import create_app

    plain, cached = pair(backend)
    prompts = [SHARED + f"Item {i}. {QUERIES[i % 3]}" for i in range(6)]
    expected = [plain.generate(p, CONFIG).text for p in prompts]
    cached.generate(SHARED + "Warm-up.", CONFIG)
    answers: dict[int, str] = {}
    with serve_in_thread(create_app(cached, model_name="tiny")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        def ask(i: int) -> None:
            response = client.completions.create(
                model="tiny", prompt=prompts[i], max_tokens=CONFIG.max_tokens, temperature=0
            )
            answers[i] = response.choices[0].text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        client.close()
    assert [answers[i] for i in range(len(prompts))] == expected
    assert cached.prefix_cache.stats().hits >= len(prompts)


# -- the cache itself -------------------------------------------------------------------------

TOKEN_BYTES = 16  # one float32 tensor of 4 values per position in these slabs


def slab(start: int, stop: int) -> list[torch.Tensor]:
    """Positions ``start..stop-1``, each holding its own position number."""
    return [torch.arange(start, stop, dtype=torch.float32)[:, None].repeat(1, 4)]


def cached_length(cache: PrefixCache, ids: list[int]) -> int:
    return cache.lookup(ids, len(ids)).length


def test_lookup_takes_the_longest_cached_prefix_across_split_nodes():
    cache = PrefixCache(10_000)
    cache.insert([1, 2, 3, 4, 5], slab)
    cache.insert([1, 2, 9, 9], lambda a, b: [t + 100 for t in slab(a, b)])
    assert cache.stats().bytes == 7 * TOKEN_BYTES  # [1, 2] is stored once
    found = cache.lookup([1, 2, 3, 4, 7], limit=10)
    target = torch.zeros(10, 4)
    found.write([target], 3, found.length)
    assert found.length == 4 and target[3:7, 0].tolist() == [0, 1, 2, 3]
    found = cache.lookup([1, 2, 9, 9, 9], limit=10)
    found.write([target], 0, found.length)
    assert found.length == 4 and target[:4, 0].tolist() == [0, 1, 102, 103]
    assert cache.lookup([1, 2, 3, 4, 5], limit=3).length == 3
    assert cached_length(cache, [7, 1, 2]) == 0


def test_never_holds_more_than_its_budget():
    budget = 20 * TOKEN_BYTES
    cache = PrefixCache(budget)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        length = int(torch.randint(1, 9, (1,), generator=generator))
        ids = torch.randint(0, 4, (length,), generator=generator).tolist()
        cache.insert(ids, slab)
        assert cache.stats().bytes <= budget
    assert cache.stats().evictions > 0
    cache.insert(list(range(100, 130)), slab)  # larger than the whole budget: not stored
    assert cached_length(cache, list(range(100, 130))) == 0
    assert 0 < cache.stats().bytes <= budget


def test_eviction_takes_the_least_recently_used_first():
    cache = PrefixCache(12 * TOKEN_BYTES)
    for first in (1, 2, 3):
        cache.insert([first] * 4, slab)
    cache.lookup([1] * 4, limit=4)  # 1 is now more recent than 2 and 3
    cache.insert([4] * 4, slab)  # over budget by one prompt: 2 goes
    assert [cached_length(cache, [first] * 4) for first in (1, 2, 3, 4)] == [4, 0, 4, 4]
    assert cache.stats().evictions == 1


def test_a_small_budget_holds_the_backend_within_it(backend):
    plain, _ = pair(backend)
    per_token = sum(
        t[0, :, 0].numel() * t.element_size() for t in backend.model.new_cache(1, 1).keys
    )
    budget = 2 * per_token * 70  # keys and values of 70 positions
    small = ScratchBackend(backend.model, backend.tokenizer, prefix_cache_bytes=budget)
    for i in range(6):
        prompt = SHARED + f"Item {i}: " + QUERIES[i % 3]
        assert small.generate(prompt, CONFIG).text == plain.generate(prompt, CONFIG).text
        assert small.prefix_cache.stats().bytes <= budget
    stats = small.prefix_cache.stats()
    assert stats.evictions > 0 and stats.hits > 0 and stats.bytes > 0


def test_a_zero_budget_stores_nothing_but_counts_tokens(backend):
    plain, _ = pair(backend)
    for _ in range(2):
        plain.generate(SHARED + QUERIES[0], CONFIG)
    stats = plain.prefix_cache.stats()
    length = len(plain.tokenizer.encode(SHARED + QUERIES[0]))
    assert (stats.bytes, stats.hits, stats.tokens_reused) == (0, 0, 0)
    assert stats.tokens_computed == 2 * length


@pytest.mark.parametrize("budget", [-1, 1.5, True, "1GB"])
def test_a_bad_budget_is_a_configuration_error_naming_it(budget, hf_folder):
    with pytest.raises(ConfigurationError, match="prefix_cache_bytes must be a non-negative"):
        PrefixCache(budget)
    with pytest.raises(ConfigurationError, match="prefix_cache_bytes"):
        pk.get_backend(f"scratch:{hf_folder}", device="cpu", prefix_cache_bytes=budget)


def test_the_budget_is_an_option_of_get_backend(hf_folder):
    chosen = pk.get_backend(f"scratch:{hf_folder}", device="cpu", prefix_cache_bytes=12345)
    assert isinstance(chosen, ScratchBackend)
    assert chosen.prefix_cache.max_bytes == 12345
