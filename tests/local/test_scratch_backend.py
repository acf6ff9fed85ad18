"""The scratch backend: generation (KV cache, batching, sampling, stops, streaming) and scoring,
checked against transformers on the same weights."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import promptkit as pk
from promptkit.backends import GenerationConfig, _local
from promptkit.backends.scratch import _backend as scratch_backend
from promptkit.errors import ConfigurationError, ContextWindowError, InputValidationError

PROMPTS = ["The quick brown fox", "To be", "A journey of a thousand miles begins with"]


def hf_greedy(hf_model, tokenizer, prompt, max_new):
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():
        out = hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, ids.size(1) :].tolist()


def test_greedy_generation_matches_transformers(backend, hf_model):
    tokenizer = backend.tokenizer
    for prompt in PROMPTS:
        expected = hf_greedy(hf_model, tokenizer, prompt, 12)
        got = tokenizer.encode(backend.generate(prompt, GenerationConfig(max_tokens=12)).text)
        if tokenizer.eot_id in expected:
            expected = expected[: expected.index(tokenizer.eot_id)]
        assert tokenizer.decode(got) == tokenizer.decode(expected)


def stop_for_some(texts: list[str]) -> str:
    """A stop string inside one of the texts, after its start, missing from another one (so
    that the rows stop apart)."""
    for text in texts:
        for width in (2, 3, 4, 6):
            for start in range(1, len(text) - width):
                stop = text[start : start + width]
                if text.index(stop) == start and not all(stop in other for other in texts):
                    return stop
    raise AssertionError(f"no stop found for {texts!r}")


def test_batched_generation_equals_generating_alone(backend):
    config = GenerationConfig(max_tokens=10)
    batch = backend.generate_batch(PROMPTS, config)
    assert [c.text for c in batch] == [backend.generate(p, config).text for p in PROMPTS]
    sampled = GenerationConfig(max_tokens=10, temperature=1.0, seed=7)
    assert [c.text for c in backend.generate_batch(PROMPTS, sampled)] == [
        backend.generate(p, sampled).text for p in PROMPTS
    ]
    # rows that stop early leave the batch; the others go on as they would alone
    for free in (config, sampled):
        stopping = free.replace(
            stop=(stop_for_some([backend.generate(p, free).text for p in PROMPTS]),)
        )
        batch = backend.generate_batch(PROMPTS, stopping)
        alone = [backend.generate(p, stopping) for p in PROMPTS]
        assert [(c.text, c.usage) for c in batch] == [(c.text, c.usage) for c in alone]
        assert len({c.usage.completion_tokens for c in alone}) > 1  # they did stop apart


def _outcome(call, *args):
    try:
        return call(*args)
    except ContextWindowError as exc:
        return exc


def test_concurrent_calls_share_passes_and_get_what_they_would_alone(backend, monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    prompts = [*PROMPTS, *PROMPTS]
    config = GenerationConfig(max_tokens=6)
    sampled = GenerationConfig(max_tokens=6, temperature=1.0, seed=3)
    alone = [backend.generate(p, config).text for p in prompts]
    alone_sampled = [backend.generate(p, sampled).text for p in prompts]
    passes = []
    forward = backend.model.forward

    def slow_forward(*args, **kwargs):  # a pass long enough for the other callers to queue
        passes.append(args[0].size(0))
        time.sleep(0.02)
        return forward(*args, **kwargs)

    monkeypatch.setattr(backend.model, "forward", slow_forward)
    start = threading.Barrier(len(prompts))

    def one(prompt: str, using: GenerationConfig = config) -> str:
        start.wait()
        return backend.generate(prompt, using).text

    with ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(one, prompts)) == alone
        assert max(passes) > 1  # rows of several calls in one pass
        assert list(pool.map(one, prompts, [sampled] * len(prompts))) == alone_sampled
        passes.clear()
        too_long = "word " * (backend.context_window or 0)
        outcomes = list(pool.map(lambda p: _outcome(one, p), [too_long, *prompts[1:]]))
        assert isinstance(outcomes[0], ContextWindowError)
        assert outcomes[1:] == alone[1:]
        # refused before it joined: no batch failed and reran one by one (5 x 6 passes)
        assert max(passes) > 1 and len(passes) < 5 * 6


def test_samples_drawn_together_equal_each_seed_drawn_alone(backend):
    config = GenerationConfig(max_tokens=12, temperature=1.0, stop=("e",))
    together = backend.generate_samples("The quick brown fox", config, [5, 6, 7, 8])
    alone = [backend.generate("The quick brown fox", config.replace(seed=s)) for s in (5, 6, 7, 8)]
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.finish_reason for c in together] == [c.finish_reason for c in alone]
    assert [c.usage for c in together] == [c.usage for c in alone]
    assert len({c.text for c in together}) > 1  # the seeds differ, so do the samples


def test_usage_and_finish_reason(backend):
    completion = backend.generate("To be", GenerationConfig(max_tokens=5))
    assert completion.usage.prompt_tokens == len(backend.tokenizer.encode("To be"))
    assert completion.usage.completion_tokens <= 5
    assert completion.finish_reason in ("length", "stop")


def test_seeded_sampling_is_repeatable_and_temperature_matters(backend):
    config = GenerationConfig(max_tokens=15, temperature=1.5, seed=3)
    first = backend.generate("To be", config).text
    assert backend.generate("To be", config).text == first
    assert backend.generate("To be", config.replace(seed=4)).text != first


def test_top_k_one_and_tiny_top_p_are_greedy(backend):
    greedy = backend.generate("To be", GenerationConfig(max_tokens=8)).text
    for config in (
        GenerationConfig(max_tokens=8, temperature=2.0, top_k=1, seed=1),
        GenerationConfig(max_tokens=8, temperature=2.0, top_p=1e-9, seed=1),
    ):
        assert backend.generate("To be", config).text == greedy


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    generators = [torch.Generator().manual_seed(0)]
    top2 = GenerationConfig(temperature=1.0, top_k=2)
    draws = {scratch_backend.sample_next(logits, top2, generators).item() for _ in range(50)}
    assert draws == {2, 3}
    nucleus = GenerationConfig(temperature=1.0, top_p=0.6)  # p(3)=0.64 alone covers it
    assert {scratch_backend.sample_next(logits, nucleus, generators).item() for _ in range(50)} == {
        3
    }


def test_the_greedy_token_is_argmax_s_whatever_the_logits():
    """top_tokens reads float32 CPU logits through NumPy; its answer must be torch.argmax's:
    the first of equal maxima, a row of -inf but one, NaN (taken as the maximum by both), a
    strided view, and the paths NumPy does not take (bfloat16, logits needing gradients)."""
    torch.manual_seed(0)
    logits = torch.randn(5, 50_257)
    logits[1, 7] = logits[1, 9] = logits[1].max() + 1  # a tie: the first one
    logits[2] = float("-inf")
    logits[2, 123] = -1e30
    logits[3, 40_000] = float("nan")
    cases = [logits, logits[:, ::2], logits.to(torch.bfloat16), logits.clone().requires_grad_()]
    for case in cases:
        assert _local.top_tokens(case).tolist() == case.argmax(dim=-1).tolist()
        assert [_local.top_token(row) for row in case] == case.argmax(dim=-1).tolist()
    assert _local.top_tokens(logits).dtype == torch.long
    one = _local.top_tokens(logits[1])  # a single row: a 0-d tensor, as argmax gives
    assert one.shape == () and int(one) == int(logits[1].argmax())
    assert _local.any_allowed(logits[2]) and not _local.any_allowed(torch.full((9,), -math.inf))
    greedy = GenerationConfig(temperature=0)
    assert scratch_backend.sample_next(logits, greedy, None).tolist() == [
        int(i) for i in logits.argmax(dim=-1)
    ]


@pytest.mark.parametrize("spread", [0.5, 8.0])  # flat (the nucleus is wide) or peaked
def test_the_nucleus_is_the_one_a_full_sort_gives(spread):
    torch.manual_seed(0)
    logits = torch.randn(4, 3000) * spread
    for config in (
        GenerationConfig(temperature=1.0, top_p=0.9),
        GenerationConfig(temperature=1.0, top_p=0.3, top_k=40),
    ):
        kept = logits
        if config.top_k is not None:
            kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
            kept = logits.masked_fill(logits < kth, float("-inf"))
        ordered, order = torch.sort(kept, dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        dropped = ordered.masked_fill(probs.cumsum(-1) - probs > config.top_p, float("-inf"))
        expected = torch.full_like(kept, float("-inf")).scatter(-1, order, dropped)
        values, ids = _local._candidates(logits, config)
        assert ids is not None
        got = torch.full_like(logits, float("-inf")).scatter(-1, ids, values)
        assert torch.equal(got.isfinite(), expected.isfinite())
        assert torch.equal(got[got.isfinite()], expected[expected.isfinite()])
        if config.top_k is None:  # both paths: a nucleus past the first candidates, and within
            wide = (expected.isfinite().sum(-1) > _local.NUCLEUS_CANDIDATES).any()
            assert bool(wide) == (spread == 0.5)


def test_stop_sequences_cut_the_text_and_stop_generation(backend):
    text = backend.generate("To be", GenerationConfig(max_tokens=20)).text
    assert len(text) > 3
    stop = text[2:4]
    cut = backend.generate("To be", GenerationConfig(max_tokens=20, stop=(stop,)))
    assert cut.text == text[: text.index(stop)] and cut.finish_reason == "stop"
    assert cut.usage.completion_tokens < 20


def test_streaming_yields_the_same_text(backend):
    for config in (
        GenerationConfig(max_tokens=12),
        GenerationConfig(max_tokens=12, stop=("e",)),
        GenerationConfig(max_tokens=12, temperature=1.0, seed=2),
    ):
        pieces = list(backend.stream("The quick brown fox", config))
        assert "".join(pieces) == backend.generate("The quick brown fox", config).text
        assert len(pieces) > 1 or len("".join(pieces)) < 3


def test_too_long_prompt_is_a_context_window_error(backend):
    long_prompt = "fox " * 200
    with pytest.raises(ContextWindowError) as info:
        backend.generate(long_prompt, GenerationConfig(max_tokens=4))
    assert info.value.context_window == 128 and info.value.prompt_tokens > 128
    with pytest.raises(ContextWindowError):
        backend.generate("To be", GenerationConfig(max_tokens=128))
    with pytest.raises(InputValidationError):
        backend.generate("")


def test_loglikelihood_matches_transformers(backend, hf_model):
    tokenizer = backend.tokenizer
    pairs = [("The quick brown", " fox"), ("To be, or not", " to be, that is"), ("", "The")]
    for (context, continuation), (score, _) in zip(
        pairs, backend.loglikelihood_batch(pairs), strict=True
    ):
        ctx = tokenizer.encode(context) if context else [tokenizer.eot_id]
        cont = tokenizer.encode(continuation)
        with torch.no_grad():
            logprobs = hf_model(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
        expected = sum(logprobs[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        assert score == pytest.approx(expected, abs=1e-4)
        assert backend.loglikelihood(context, continuation) == pytest.approx(score, abs=1e-5)


def test_greedy_flag(backend):
    greedy = backend.generate("The quick brown fox", GenerationConfig(max_tokens=3)).text
    (score, is_greedy), (_, other) = backend.loglikelihood_batch(
        [("The quick brown fox", greedy), ("The quick brown fox", " zebra crossing")]
    )
    assert is_greedy and not other and score < 0


def test_chunked_scoring_equals_unchunked(backend, monkeypatch):
    pairs = [("The quick", " brown fox jumps over the lazy dog"), ("To", " be or not")]
    full = backend.loglikelihood_batch(pairs)
    monkeypatch.setattr(_local, "SCORE_CHUNK", 3)
    monkeypatch.setattr(_local, "SCORE_BATCH", 1)
    chunked = backend.loglikelihood_batch(pairs)
    for (a, ga), (b, gb) in zip(full, chunked, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb


def hf_sliding_perplexity(hf_model, ids, window, stride):
    """The transformers documentation's sliding-window perplexity, computed independently."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        chunk = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logprobs = hf_model(chunk).logits[0, :-1].log_softmax(-1)
        targets = chunk[0, 1:]
        new = end - max(prev_end, begin + 1)
        token_lp = logprobs[-new:].gather(1, targets[-new:, None])
        nll -= token_lp.sum().item()
        count += new
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll / count), count


@pytest.mark.parametrize("stride", [32, 64, 128])
def test_sliding_window_perplexity_matches_transformers(backend, hf_model, stride):
    text = "The quick brown fox jumps over the lazy dog. To be, or not to be. " * 12
    ids = backend.tokenizer.encode(text)
    assert len(ids) > 128
    expected, count = hf_sliding_perplexity(hf_model, ids, 128, stride)
    stats = backend.perplexity_stats(text, stride=stride)
    assert stats.tokens == count
    if stride < 128:
        assert count == len(ids) - 1  # every token after the first, once
    assert stats.perplexity == pytest.approx(expected, rel=1e-4)
    assert backend.perplexity(text, stride=stride) == pytest.approx(expected, rel=1e-4)


def test_perplexity_bad_input(backend):
    with pytest.raises(InputValidationError, match="stride"):
        backend.perplexity("some text here", stride=1000)
    with pytest.raises(InputValidationError, match="fewer than 2"):
        backend.perplexity("a")


def test_spec_errors(tmp_path, monkeypatch):
    import promptkit.models

    monkeypatch.setattr(promptkit.models, "MINI", tmp_path / "no-shipped-model")
    with pytest.raises(ConfigurationError, match="needs a model folder"):
        pk.get_backend("scratch")  # a copy of promptkit without promptkit-mini
    with pytest.raises(ConfigurationError, match="no such model folder or file"):
        pk.get_backend(f"scratch:{tmp_path / 'nope'}")
    with pytest.raises(ConfigurationError, match="unknown option.*it takes chat_template"):
        pk.get_backend(f"scratch:{tmp_path}", temperature=1)
    with pytest.raises(ConfigurationError, match="scratch: chat_template must be true or false"):
        pk.get_backend(f"scratch:{tmp_path}", chat_template="false")  # not read as true
    with pytest.raises(ConfigurationError, match="scratch: device must be text, got int"):
        pk.get_backend(f"scratch:{tmp_path}", device=0)
    with pytest.raises(ConfigurationError, match="device 'gpu' is not a device PyTorch knows"):
        pk.get_backend(f"scratch:{tmp_path}", device="gpu")
    if not torch.cuda.is_available():  # CI: a CPU-only PyTorch
        with pytest.raises(ConfigurationError, match="device 'cuda:1' is not available here"):
            pk.get_backend(f"scratch:{tmp_path}", device="cuda:1")
    with pytest.raises(ConfigurationError, match="no such model folder or file"):
        pk.get_backend("scratch:/nonexistent/model")  # a path: not looked up on the hub
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigurationError, match="is a file, not a model"):
        pk.get_backend(f"scratch:{tmp_path / 'notes.txt'}")


def test_prompt_runs_on_the_scratch_backend(backend):
    prompt = pk.Prompt(query="{{ text }}", style="completion")
    config = GenerationConfig(max_tokens=5)
    result = prompt.run({"text": "To be"}, backend=backend, config=config)
    assert result.usage.prompt_tokens == len(backend.tokenizer.encode("To be"))
    expected = backend.generate("To be", config)
    assert result.text == expected.text
    assert result.output == expected.text.strip()  # a str answer is the text, trimmed
    assert result.usage.completion_tokens == expected.usage.completion_tokens > 0


def test_plain_scratch_is_the_model_shipped_in_the_package(hf_folder, tmp_path, monkeypatch):
    import shutil

    import promptkit.models
    from promptkit._cli_options import backend_for

    monkeypatch.delenv("PROMPTKIT_BACKEND", raising=False)
    monkeypatch.setattr(promptkit.models, "MINI", tmp_path / "mini")
    with pytest.raises(ConfigurationError, match="ships no default model"):
        pk.get_backend("scratch")
    with pytest.raises(
        pk.errors.UsageError, match="no backend configured and no model to fall back on"
    ):
        backend_for(None, pk.load_prompt("sentiment"))
    shutil.copytree(hf_folder, tmp_path / "mini")
    for chosen in (
        pk.get_backend("scratch"),
        pk.get_backend(),
        backend_for(None, pk.load_prompt("sentiment")),
    ):
        assert chosen.name == "scratch:promptkit-mini"
        assert chosen.weights_path == tmp_path / "mini" / "model.safetensors"
    monkeypatch.setenv("PROMPTKIT_BACKEND", f"scratch:{hf_folder}")
    assert pk.get_backend().name == f"scratch:{hf_folder}"  # the environment wins
    assert backend_for("scripted", None).name == "scripted"  # --backend wins


def test_position_embeddings_start_from_sinusoids():
    from promptkit.backends.scratch._gpt2_extras import sinusoids
    from promptkit.backends.scratch.gpt2 import GPT, preset

    codes = sinusoids(64, 16, std=0.02)
    assert codes.shape == (64, 16) and float(codes.std()) == pytest.approx(0.02, rel=1e-4)
    # the code of t + k is one fixed linear map of the code of t, for every t
    k = 3
    # (in float64: the slowest columns are nearly constant, so float32 least squares is
    # ill-conditioned and its residual varied from run to run)
    before, after = codes[:-k].double(), codes[k:].double()
    shift = torch.linalg.lstsq(before, after, driver="gelsd").solution
    assert torch.allclose(before @ shift, after, atol=1e-6)
    model = GPT(preset("tiny", context_length=64))
    assert torch.equal(model.wpe.weight.detach(), sinusoids(64, model.config.n_embd, std=0.02))


def assert_cache_and_padding_agree(model: torch.nn.Module, ids: torch.Tensor, full: torch.Tensor):
    """Through the cache (a prefix of 5, then one token at a time) and behind left padding
    (the first real token has nothing before it, as when it stands alone), the hidden states
    of ``ids`` ``(1, 12)`` equal ``full``, those of one plain pass."""
    cache = model.new_cache(1, 12)
    parts = [model(ids[:, :5], cache=cache)]
    parts += [model(ids[:, i : i + 1], cache=cache) for i in range(5, 12)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    padded = torch.cat([torch.randint(0, 9, (1, 3)), ids], 1)
    valid = torch.tensor([[False] * 3 + [True] * 12])
    positions = torch.tensor([[0, 0, 0, *range(12)]])
    out = model(padded, positions=positions, key_valid=valid)
    assert torch.allclose(out[:, 3:], full, atol=1e-5)


@pytest.mark.parametrize(
    "extras", [{"smear_keys": True}, {"conv_width": 4}, {"smear_keys": True, "conv_width": 3}]
)
def test_non_gpt2_options_agree_across_cache_and_padding(extras):
    """Smeared keys and the local convolution look back a few positions: stepping through
    the cache, and left padding, must give what one full pass gives."""
    from promptkit.backends.scratch.gpt2 import GPT, preset

    torch.manual_seed(0)
    model = GPT(preset("tiny", **extras)).eval()
    plain = GPT(preset("tiny")).eval()
    assert set(plain.state_dict()) < set(model.state_dict())  # GPT-2 shapes: nothing extra
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "smear" in name or "mix" in name:
                parameter.copy_(torch.randn_like(parameter))
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        full = model(ids)
        # the options really act: the hidden states differ from the plain model's
        plain.load_state_dict(
            {k: v for k, v in model.state_dict().items() if k in plain.state_dict()}
        )
        assert not torch.allclose(plain(ids), full, atol=1e-4)
        assert_cache_and_padding_agree(model, ids, full)
        padded = torch.cat([torch.randint(0, 9, (1, 3)), ids], 1)
        valid = torch.tensor([[False] * 3 + [True] * 12])
        positions = torch.tensor([[0, 0, 0, *range(12)]])
        # and padded through the cache, after a batch row was selected
        cache = model.new_cache(2, 15)
        first = model(
            padded.expand(2, -1)[:, :8],
            positions=positions.expand(2, -1)[:, :8],
            key_valid=valid.expand(2, -1)[:, :8],
            cache=cache,
        )
        cache.select(torch.tensor([1]))
        rest = model(padded[:, 8:], positions=positions[:, 8:], key_valid=valid, cache=cache)
        assert torch.allclose(torch.cat([first[1:, 3:], rest], 1), full, atol=1e-5)


def test_mimetic_start_gives_each_query_its_own_key():
    from promptkit.backends.scratch._gpt2_extras import MIMETIC_SCORE
    from promptkit.backends.scratch.gpt2 import GPT, preset

    torch.manual_seed(0)
    model = GPT(preset("tiny", mimetic_init=True))
    c = model.config.n_embd
    head = c // model.config.n_head
    for block in model.h:
        weight = block.attn.c_attn.weight.detach()
        assert torch.equal(weight[:, :c], weight[:, c : 2 * c])
        x = torch.nn.functional.layer_norm(torch.randn(256, c), (c,))
        q = (x @ weight[:, :c]).view(256, -1, head)
        self_score = (q * q).sum(-1) / math.sqrt(head)  # (inputs, heads)
        assert float(self_score.mean()) == pytest.approx(MIMETIC_SCORE, rel=0.2)
    plain = GPT(preset("tiny")).h[0].attn.c_attn.weight.detach()
    assert not torch.equal(plain[:, :c], plain[:, c : 2 * c])


def step_on_targets(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """One optimizer step on the next-token loss of the targets ``mask`` ``(B, T - 1)`` marks
    in the rows ``x`` ``(B, T)``; returns the loss."""
    logits = model.logits(model(x[:, :-1]))
    loss = torch.nn.functional.cross_entropy(logits[mask], x[:, 1:][mask])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def induction_loss(extras: dict[str, bool], steps: int) -> float:
    """Train a 2-layer model to continue a random sequence that came before, at a random
    offset (only an induction head can); returns the final loss on the repeats."""
    from promptkit.backends.scratch.gpt2 import GPT, GPTConfig

    torch.manual_seed(0)
    vocab, length = 256, 8
    model = GPT(
        GPTConfig(vocab_size=vocab, context_length=48, n_layer=2, n_head=2, n_embd=64, **extras)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        rows, masks = [], []
        for _ in range(16):
            start, gap = torch.randint(0, 12, (2,)).tolist()
            segment = torch.randint(0, vocab, (length,))
            row = torch.randint(0, vocab, (48,))
            row[start : start + length] = segment
            again = start + length + gap
            row[again : again + length] = segment
            mask = torch.zeros(47, dtype=torch.bool)
            mask[again : again + length - 1] = True  # targets again+1 .. again+length-1
            rows.append(row)
            masks.append(mask)
        loss = step_on_targets(model, optimizer, torch.stack(rows), torch.stack(masks))
    return float(loss.detach())


@pytest.mark.slow
def test_smeared_keys_with_a_mimetic_start_learn_induction_fast():
    """The reason promptkit-mini uses both: together they copy from context within a few
    hundred small steps; plain GPT-2 init learns nothing here in that time (chance: ln 256)."""
    assert induction_loss({"smear_keys": True, "mimetic_init": True}, 300) < 1.5
    assert induction_loss({}, 300) > 4.0


def test_alibi_agrees_across_cache_and_padding():
    """ALiBi counts distance in cache slots: stepping through the cache and left padding
    give what one full pass gives, and the model has no position table."""
    from promptkit.backends.scratch.gpt2 import GPT, preset

    torch.manual_seed(0)
    model = GPT(preset("tiny", alibi=True, smear_keys=True, conv_width=3)).eval()
    assert model.wpe is None and not any("wpe" in k for k in model.state_dict())
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        full = model(ids)
        assert_cache_and_padding_agree(model, ids, full)
        # attention really falls with distance: shuffling the past changes the last state
        shuffled = torch.cat([ids[:, :11].flip(1), ids[:, 11:]], 1)
        assert not torch.allclose(model(shuffled)[:, -1], full[:, -1], atol=1e-4)


def test_alibi_bias_is_minus_slope_times_distance():
    from promptkit.backends.scratch._gpt2_extras import alibi_bias, alibi_slopes

    slopes = alibi_slopes(4)
    assert torch.allclose(slopes, torch.tensor([2**-2, 2**-4, 2**-6, 2**-8]))
    bias = alibi_bias(slopes, None, query_length=2, past_length=3)  # (1, 4, 2, 5)
    assert bias.shape == (1, 4, 2, 5)
    assert bias[0, 0, 0].tolist() == [-0.75, -0.5, -0.25, 0.0, float("-inf")]
    assert bias[0, 3, 1, 0] == pytest.approx(-4 * 2**-8)


def binding_loss(extras: dict[str, Any], steps: int) -> float:
    """Train a 3-layer model on records ``key f1 f2 f3 value`` (fixed fillers), five per row,
    then the five keys asked again in another order: only reading the value three tokens
    after the matching key answers; returns the final loss on the asked values."""
    from promptkit.backends.scratch.gpt2 import GPT, GPTConfig

    torch.manual_seed(0)
    vocab, records, gap = 256, 5, 3
    fill = list(range(240, 240 + gap))
    length = 2 * records * (gap + 2)
    model = GPT(
        GPTConfig(vocab_size=vocab, context_length=length, n_layer=3, n_head=4, n_embd=64, **extras)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        rows, masks = [], []
        for _ in range(16):
            keys, values = torch.randperm(200)[:records].tolist(), torch.randint(0, 200, (5,))
            row, mask = [], []
            for k, v in zip(keys, values.tolist(), strict=True):
                row += [k, *fill, v]
                mask += [False] * (gap + 2)
            for i in torch.randperm(records).tolist():
                row += [keys[i], *fill, int(values[i])]
                mask += [False] * (gap + 1) + [True]
            rows.append(row)
            masks.append(mask[1:])
        loss = step_on_targets(model, optimizer, torch.tensor(rows), torch.tensor(masks))
    return float(loss.detach())


@pytest.mark.slow
def test_alibi_with_a_summing_convolution_binds_across_a_gap():
    """Why promptkit-mini uses ALiBi: with smeared keys, the mimetic start and the local
    convolution, a value three tokens after its key is found within several hundred steps;
    the same model with learned positions stays near chance (ln 200 = 5.3)."""
    options = {"smear_keys": True, "mimetic_init": True, "conv_width": 4}
    assert binding_loss({**options, "alibi": True}, 700) < 1.0
    assert binding_loss(options, 700) > 4.0
