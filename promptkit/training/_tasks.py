"""The task families of the generated corpus: one function per family, each drawing one
document from a random generator.

Each document is a prompt rendered by :class:`promptkit.Prompt` (instruction, format
instructions, 0 to 8 demonstrations, the query; completion style, or chat style flattened the way
promptkit sends chat to a completion-only model) followed by the answer written the way
promptkit asks for it (training ends every document with the end-of-text token). Families:

- ``classify``: words sorted into groups whose label words are made-up and defined only by the
  demonstrations (the task cannot be memorised, only read from the prompt);
- ``sentiment``: short reviews, labelled positive/negative (or with made-up label words);
- ``lookup``: key/value pairs shown as demonstrations, then one key asked again (copying);
- ``copy``: lists of random items repeated (every answer token is a copy: induction);
- ``transform``: upper case, reversal, first letters;
- ``arithmetic``: sums and differences of small numbers;
- ``extract``: a sentence about a person into the bundled ``extract`` template's compact JSON;
- ``text``: plain generated sentences, so that the model is not only a pattern matcher.

Every family draws its names, cities, label words and phrasings from the split it is given (see
:mod:`promptkit.training._vocabulary`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal

from .._prompt import Example, Prompt, Style
from ..backends._base import messages_to_text
from ._vocabulary import (
    BAD,
    CITIES,
    CONNECTORS,
    FIRST_NAMES,
    GOOD,
    GROUPS,
    INSTRUCTIONS,
    LAST_NAMES,
    THINGS,
    TRANSFORMS,
    Split,
    invented_word,
    items_of,
    label_words,
    random_code,
)

__all__ = ["FAMILIES", "Sample", "person"]

Sample = tuple[str, int | None]  # a document's text and its answer's offset


def _render(
    rng: random.Random,
    *,
    instruction: str,
    query: str,
    output_type: Any,
    examples: list[tuple[dict[str, Any], Any]],
    query_input: dict[str, Any],
    answer: Any,
    style: Style | None = None,
) -> Sample:
    """The prompt promptkit renders for this task (``style``, else a random one), then the
    answer; with where the answer starts."""
    if style is None:
        style = "chat" if rng.random() < 1 / 3 else "completion"
    prompt: Prompt[Any] = Prompt(
        instruction=instruction,
        query=query,
        output_type=output_type,
        examples=[Example(input=i, output=o) for i, o in examples],
        style=style,
        format_instructions=rng.random() < 0.7,
    )
    rendered = prompt.render(query_input)
    text = rendered if isinstance(rendered, str) else messages_to_text(rendered)
    return f"{text} {prompt.output.serialize(prompt.output.validate(answer))}", len(text)


def _shots(rng: random.Random, most: int = 8) -> int:
    """How many demonstrations a document shows: 0 to 8, few-shot most often."""
    return min(most, rng.choice((0, 1, 2, 2, 3, 4, 4, 5, 6, 8)))


def _classify(rng: random.Random, split: Split) -> Sample:
    groups = rng.sample(sorted(GROUPS), rng.choice((2, 2, 2, 2, 3, 3)))
    # Mostly made-up label words (readable only from the demonstrations); sometimes the group
    # names themselves, so that the model also knows which words belong together.
    named = rng.random() < 0.2
    labels = groups if named else label_words(rng, split, len(groups))
    label_of = dict(zip(groups, labels, strict=True))
    count = rng.choice((0, 1, 2, 3, 4, 5, 6, 6, 8, 8, 10, 12, 14, 16))
    # A few words of each group come back: a repeated word's label is read off its earlier
    # demonstration (exact induction, the circuit the model builds first), a new word's from
    # the other words of its group (what the held-out evaluation measures).
    members = {g: GROUPS[g].split() for g in groups}
    regulars = {g: rng.sample(members[g], rng.choice((2, 3, 4))) for g in groups}
    picks = []
    for _ in range(count + 1):
        group = rng.choice(groups)
        word = rng.choice(regulars[group] if rng.random() < 0.5 else members[group])
        picks.append((word, group))
    examples = [({"text": w}, label_of[g]) for w, g in picks[:count]]
    word, group = picks[count]
    query = rng.choice(("Input: {{ text }}\nLabel:", "Word: {{ text }}\nGroup:", "{{ text }} ->"))
    return _render(
        rng,
        instruction=rng.choice(items_of(INSTRUCTIONS["classify"], split)),
        query=query,
        output_type=Literal[tuple(labels)],
        examples=examples,
        query_input={"text": word},
        answer=label_of[group],
    )


def _review(rng: random.Random, good: bool) -> str:
    words = GOOD if good else BAD
    thing = rng.choice(THINGS)
    first, second = rng.sample(words, 2)
    return f"The {thing} was {first} {rng.choice(CONNECTORS)} {second}."


def _sentiment(rng: random.Random, split: Split) -> Sample:
    made_up = rng.random() < 0.3
    labels = label_words(rng, split, 2) if made_up else ["positive", "negative"]
    count = _shots(rng)
    polarity = [rng.random() < 0.5 for _ in range(count + 1)]
    examples = [({"text": _review(rng, p)}, labels[0] if p else labels[1]) for p in polarity[:-1]]
    good = polarity[-1]
    return _render(
        rng,
        instruction=rng.choice(items_of(INSTRUCTIONS["sentiment"], split)),
        query="Review: {{ text }}\nSentiment:",
        output_type=Literal[tuple(labels)],
        examples=examples,
        query_input={"text": _review(rng, good)},
        answer=labels[0] if good else labels[1],
    )


def _copy(rng: random.Random, split: Split) -> Sample:
    """Repeat a list of random items (dense induction: every answer token is a copy)."""

    def item() -> str:
        kinds = (
            lambda: invented_word(rng, split),
            lambda: random_code(rng),
            lambda: rng.choice(items_of(FIRST_NAMES, split)),
            lambda: rng.choice(items_of(CITIES, split)),
            lambda: str(rng.randrange(0, 1000)),
        )
        return " ".join(rng.choice(kinds)() for _ in range(rng.randrange(2, 7)))

    count = _shots(rng, 4)
    inputs = [item() for _ in range(count + 1)]
    return _render(
        rng,
        instruction=rng.choice(INSTRUCTIONS["copy"]),
        query="Input: {{ text }}\nOutput:",
        output_type=str,
        examples=[({"text": t}, t) for t in inputs[:-1]],
        query_input={"text": inputs[-1]},
        answer=inputs[-1],
    )


def _lookup(rng: random.Random, split: Split) -> Sample:
    count = max(1, _shots(rng))
    keys = rng.sample(items_of(FIRST_NAMES, split), count)
    value_of = {k: random_code(rng) for k in keys}
    # Keys are asked again among the demonstrations too: every repeat is a lookup to learn.
    order = keys + [rng.choice(keys) for _ in range(rng.randrange(0, count + 2))]
    rng.shuffle(order)
    examples = [({"key": k}, value_of[k]) for k in order]
    asked = rng.choice(keys)
    return _render(
        rng,
        instruction=rng.choice(items_of(INSTRUCTIONS["lookup"], split)),
        query="Key: {{ key }}\nValue:",
        output_type=str,
        examples=examples,
        query_input={"key": asked},
        answer=value_of[asked],
    )


def _transform(rng: random.Random, split: Split) -> Sample:
    name = rng.choice(sorted(TRANSFORMS))
    instruction, function = TRANSFORMS[name]
    words = [w for g in GROUPS.values() for w in g.split()]

    def item() -> str:
        if name == "initials":
            return " ".join(rng.sample(words, rng.choice((2, 3, 4))))
        return rng.choice(words)

    count = _shots(rng)
    inputs = [item() for _ in range(count + 1)]
    return _render(
        rng,
        instruction=instruction,
        query="Input: {{ text }}\nOutput:",
        output_type=str,
        examples=[({"text": t}, function(t)) for t in inputs[:-1]],
        query_input={"text": inputs[-1]},
        answer=function(inputs[-1]),
    )


def _arithmetic(rng: random.Random, split: Split) -> Sample:
    def item() -> tuple[str, int]:
        a, b = rng.randrange(0, 50), rng.randrange(0, 50)
        if rng.random() < 0.5:
            return f"{a} + {b}", a + b
        return f"{max(a, b)} - {min(a, b)}", max(a, b) - min(a, b)

    count = _shots(rng)
    items = [item() for _ in range(count + 1)]
    return _render(
        rng,
        instruction=rng.choice(items_of(INSTRUCTIONS["arithmetic"], split)),
        query="Q: {{ question }}\nA:",
        output_type=int,
        examples=[({"question": q}, a) for q, a in items[:-1]],
        query_input={"question": items[-1][0]},
        answer=items[-1][1],
    )


def person(
    rng: random.Random, split: Split, *, invented: float = 0.0
) -> tuple[str, dict[str, Any]]:
    """A sentence about a person and the record the ``extract`` template expects. With
    probability ``invented`` the name, and separately the city, are made up (training uses
    this so that the model learns to copy names it has never seen)."""
    first = (
        invented_word(rng, split)
        if rng.random() < invented
        else rng.choice(items_of(FIRST_NAMES, split))
    )
    last = (
        invented_word(rng, split)
        if rng.random() < invented
        else rng.choice(items_of(LAST_NAMES, split))
    )
    name = f"{first} {last}"
    age = rng.randrange(18, 90) if rng.random() < 0.8 else None
    city = None
    if rng.random() < 0.8:
        city = (
            invented_word(rng, split)
            if rng.random() < invented
            else rng.choice(items_of(CITIES, split))
        )
    date = (
        f"{rng.randrange(1990, 2030)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        if rng.random() < 0.6
        else None
    )
    parts = [name]
    if age is not None:
        parts.append(rng.choice((f", {age},", f", aged {age},", f" ({age})")))
    verb = rng.choice(("moved to", "lives in", "works in", "visited", "settled in"))
    place = f" {verb} {city}" if city else rng.choice((" started a new job", " wrote a book"))
    when = f" on {date}" if date else ""
    sentence = "".join(parts) + place + when + "."
    if date and rng.random() < 0.4:
        sentence = f"On {date}, " + "".join(parts) + place + "."
    return sentence, {"name": name, "age": age, "city": city, "date": date}


@lru_cache(maxsize=1)
def _extract_template() -> Prompt[Any]:
    from .._files import load_prompt

    return load_prompt("extract")


def _extract(rng: random.Random, split: Split) -> Sample:
    template = _extract_template()
    count = min(_shots(rng, 3), 3)
    people = [person(rng, split, invented=0.6) for _ in range(count + 1)]
    examples = [({"text": s}, r) for s, r in people[:-1]]
    instruction = template.instruction.render({})
    return _render(
        rng,
        instruction=instruction,
        query=template.query.source,
        output_type=template.output_type,
        examples=examples,
        query_input={"text": people[-1][0]},
        answer=people[-1][1],
        style=template.style if rng.random() < 0.7 else None,
    )


def _text(rng: random.Random, split: Split) -> Sample:
    sentences = []
    for _ in range(rng.randrange(3, 8)):
        who = rng.choice(items_of(FIRST_NAMES, split))
        group = rng.choice(sorted(GROUPS))
        thing = rng.choice(GROUPS[group].split())
        city = rng.choice(items_of(CITIES, split))
        sentences.append(
            rng.choice(
                (
                    f"{who} saw a {thing} in {city}.",
                    f"In {city}, {who} talked about the {thing} for hours.",
                    f"The {thing} that {who} liked was a kind of {group}.",
                    f"{who} travelled to {city} and bought a {thing}.",
                )
            )
        )
    return " ".join(sentences), None


FAMILIES: dict[str, tuple[Callable[[random.Random, Split], Sample], float]] = {
    "classify": (_classify, 0.32),
    "sentiment": (_sentiment, 0.05),
    "lookup": (_lookup, 0.14),
    "copy": (_copy, 0.1),
    "transform": (_transform, 0.05),
    "arithmetic": (_arithmetic, 0.04),
    "extract": (_extract, 0.2),
    "text": (_text, 0.1),
}
