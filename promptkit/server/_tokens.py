"""Token-level work on a local model, run on the worker: generation from token ids, and the
log-probabilities of what the model chose (OpenAI's ``logprobs`` shapes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from ..backends._base import Backend, Completion, GenerationConfig, Usage, cut_at_stop

if TYPE_CHECKING:
    from ..backends._local import LocalScoring


def local_model(backend: Backend) -> LocalScoring | None:
    """``backend`` when it declares token-level access (``capabilities.tokens``: a tokenizer,
    generation from token ids, every token's log-probability and its top alternatives), else
    None."""
    return cast("LocalScoring", backend) if backend.capabilities.tokens else None


def by_tokens(
    model: LocalScoring, prompt_ids: list[int], config: GenerationConfig
) -> tuple[Completion, list[int]]:
    """Generate from token ids: the completion, and every token generated (end-of-text
    included when the model ended with it, as vLLM reports it: a client that drops the last
    token as the generated one, such as lm-evaluation-harness, then keeps the whole prompt)."""
    new, reason = model.generate_tokens(prompt_ids, config)
    ended = reason == "stop" and new[-1:] == [model.tokenizer.eot_id]
    kept = new[:-1] if ended else new
    text, _ = cut_at_stop(model.tokenizer.decode(kept), config.stops)
    spent = Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(kept))
    return Completion(text=text, usage=spent, finish_reason=reason), new


def completion_scores(
    model: LocalScoring,
    prompt_ids: list[int],
    config: GenerationConfig,
    echo: bool,
    top: int | None,
) -> tuple[Completion, dict[str, Any] | None]:
    """Generate from ``prompt_ids``: the completion and, unless ``top`` is None, its
    ``logprobs`` (:func:`completion_logprobs`)."""
    completion, new = by_tokens(model, prompt_ids, config)
    if top is None:
        return completion, None
    return completion, completion_logprobs(model, prompt_ids, new, echo, top)


def prompt_scores(
    model: LocalScoring, prompt_ids: list[int], echo: bool, top: int
) -> dict[str, Any]:
    """The ``logprobs`` when nothing is generated (``max_tokens: 0``): the prompt's with
    ``echo``, else none."""
    return completion_logprobs(model, prompt_ids, [], echo, top)


def chat_scores(
    model: LocalScoring, prompt_text: str, config: GenerationConfig, top: int
) -> tuple[Completion, dict[str, Any]]:
    """Generate a chat answer from its flattened prompt: the completion and its ``logprobs``
    (:func:`chat_logprobs`)."""
    prompt_ids = model.tokenizer.encode(prompt_text)
    completion, new = by_tokens(model, prompt_ids, config)
    chosen = new[: completion.usage.completion_tokens]
    return completion, chat_logprobs(model, prompt_ids, chosen, top)


def completion_logprobs(
    model: LocalScoring, prompt_ids: list[int], generated: list[int], echo: bool, top: int
) -> dict[str, Any]:
    """The ``logprobs`` of a completion choice: each generated token (the prompt's too with
    ``echo``) with its log-probability, the ``top`` likeliest tokens at its place and the
    chosen one, and its offset in the choice's text."""
    sequence = prompt_ids + generated
    scores = model.token_id_logprobs(sequence, top)
    decode = model.tokenizer.decode
    first = 0 if echo else len(prompt_ids)
    base = 0 if echo else len(decode(prompt_ids))
    tokens, values, offsets = [], [], []
    tops: list[dict[str, float] | None] = []
    for i in range(first, len(sequence)):
        piece = decode([sequence[i]])
        value, best = scores[i]
        tokens.append(piece)
        values.append(value)
        offsets.append(len(decode(sequence[:i])) - base)
        if value is None:
            tops.append(None)
        else:
            alternatives = {decode([t]): lp for t, lp in best.items()}
            tops.append(alternatives | {piece: value})
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(
    model: LocalScoring, prompt_ids: list[int], generated: list[int], top: int
) -> dict[str, Any]:
    """The ``logprobs`` of a chat choice: each generated token with its log-probability and
    the ``top`` likeliest tokens at its place."""
    scores = model.token_id_logprobs(prompt_ids + generated, top)[len(prompt_ids) :]
    decode = model.tokenizer.decode

    def entry(token: int, value: float) -> dict[str, Any]:
        text = decode([token])
        return {"token": text, "logprob": value, "bytes": list(text.encode())}

    content = []
    for token, (value, best) in zip(generated, scores, strict=True):
        item = entry(token, value or 0.0)
        item["top_logprobs"] = [entry(t, lp) for t, lp in best.items()]
        content.append(item)
    return {"content": content}
