"""A training corpus for a small GPT, generated: documents in the very formats promptkit renders.

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

Everything is deterministic under ``seed``. Names, cities, made-up label words and instruction
phrasings are split in two by a fixed hash: ``split="train"`` uses one part, ``"heldout"`` the
other, so evaluation on held-out items measures what the model reads from the prompt, not what
it memorised.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from ..backends.base import messages_to_text
from ..errors import UsageError
from ..prompt import Example, Prompt, Style

__all__ = [
    "FAMILIES",
    "Document",
    "Split",
    "generate",
    "split_of",
    "write_corpus",
    "write_eval_tasks",
]

Split = Literal["train", "heldout"]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words(
    "Ana Ben Carla David Elena Farid Grace Hugo Ines Jonas Kenji Lena Marco Nadia Omar Paula "
    "Quentin Rosa Samir Tara Umar Vera Walter Ximena Yusuf Zoe Aiko Bruno Chloe Dmitri Emeka "
    "Fatima Giulia Hassan Ingrid Jamal Katya Liam Mei Nikos Olga Pedro Rania Sven Tomas Uma "
    "Viktor Wen Yara Zain Alba Boris Clara Diego Esra Felix Greta Ivan Julia Karim"
)
LAST_NAMES = _words(
    "Lima Sato Rossi Novak Okafor Silva Meyer Haddad Larsen Moreau Kim Costa Ivanova Mendes "
    "Nakamura Berg Fischer Garcia Dubois Kowalski Petrov Yilmaz Tanaka Lopez Andersen Rahman "
    "Schmidt Ferrari Nguyen Walsh Horvath Santos Fujita Weber Ortiz Lindqvist Barros Kovacs "
    "Mwangi Chen Ali Popescu Jensen Moretti Suzuki Almeida Kaya Brandt"
)
CITIES = _words(
    "Porto Osaka Milan Lagos Lyon Quito Oslo Cairo Perth Leeds Turin Kyoto Lima Graz Bergen "
    "Seville Dakar Hanoi Malmo Bari Split Cork Utrecht Gdansk Izmir Tartu Nantes Leipzig "
    "Bilbao Accra Kobe Genoa Krakow Aarhus Basel Lille Minsk Riga Ghent Tampere Bologna Cusco "
    "Fez Tromso Zadar Sapporo Arusha Nice"
)
GROUPS = {
    "animal": "cat dog horse cow sheep goat tiger lion wolf bear fox mouse rabbit eagle owl duck",
    "fruit": "apple pear plum cherry lemon orange mango grape peach banana melon kiwi fig lime",
    "color": "red blue green yellow purple pink brown black white grey violet teal gold navy",
    "tool": "hammer saw drill wrench chisel shovel rake axe pliers ladder spanner file trowel",
    "country": "France Spain Peru Japan Kenya Chile Egypt India Norway Brazil Canada Italy Ghana",
    "vehicle": "car bus truck train bicycle tram boat ship plane scooter van taxi ferry wagon",
    "instrument": "piano violin guitar drum flute harp cello trumpet organ banjo oboe lute horn",
    "drink": "tea coffee milk water juice wine beer cocoa soda cider lemonade kefir broth",
}
_REAL_NAMES = frozenset(FIRST_NAMES + LAST_NAMES + CITIES)
SYLLABLES = _words("ka lo mi ru te zo pa ni fe du so vi ba ke mo ti lu ga re po")
# Made-up names are also spelled from these, so that their pieces are as varied as real names'
ONSETS = _words("b c d f g h j k l m n p r s t v w y z ch sh th br cl dr gr kr pl st tr")
VOWELS = _words("a e i o u a e i o y ai ei ou ia")
CODAS = ("", "", "", "n", "r", "s", "l", "k", "m", "t", "ss", "nd")
GOOD = _words("wonderful superb delightful brilliant excellent lovely charming great fantastic")
BAD = _words("awful terrible boring dreadful broken useless disappointing poor horrible")
THINGS = _words("film meal hotel book concert phone game class show service album museum")
CONNECTORS = ("and", "but honestly", "and overall", "so in short")
INSTRUCTIONS = {
    "classify": (
        "Sort each word into its group.",
        "Label each item with the group it belongs to.",
        "Give the category of each word.",
        "Assign each input its label, as in the examples.",
        "Which group does each word belong to?",
        "Classify the words.",
    ),
    "sentiment": (
        "Decide whether each review is positive or negative.",
        "Label the sentiment of each review.",
        "Is the review favourable? Answer with its label.",
        "Classify each review by its tone.",
        "Read the review and give its sentiment.",
    ),
    "lookup": (
        "Each key has a value. Give the value of the last key.",
        "Answer with the value stored under the key.",
        "Look up the key in the table above.",
        "Repeat the value that belongs to the key.",
        "Find the value for the key.",
    ),
    "copy": (
        "Repeat the input exactly.",
        "Copy the text.",
        "Write the same items again.",
    ),
    "arithmetic": (
        "Compute the result.",
        "Solve each sum.",
        "Give the answer to the calculation.",
        "Work out the number.",
        "Calculate.",
    ),
}
TRANSFORMS: dict[str, tuple[str, Callable[[str], str]]] = {
    "upper": ("Write the word in capital letters.", str.upper),
    "reverse": ("Write the word backwards.", lambda w: w[::-1]),
    "initials": (
        "Give the first letter of each word.",
        lambda phrase: "".join(w[0] for w in phrase.split()),
    ),
}


def split_of(item: str) -> Split:
    """Which split an item (a name, a city, a label word, an instruction) belongs to: one in
    five is held out, fixed by a hash of the item."""
    digest = hashlib.sha256(item.encode()).digest()
    return "heldout" if digest[0] % 5 == 0 else "train"


def _part(items: Sequence[str], split: Split) -> list[str]:
    chosen = [i for i in items if split_of(i) == split]
    return chosen or list(items)


@dataclass(frozen=True)
class Document:
    """One generated training text, where it came from, and where its answer starts (the
    character offset of the answer after the prompt; None for plain text)."""

    family: str
    text: str
    answer: int | None = None


Sample = tuple[str, int | None]  # a document's text and its answer's offset


def _label_words(rng: random.Random, split: Split, count: int) -> list[str]:
    """Made-up label words (two or three syllables) of the split, all different."""
    words: list[str] = []  # a list, not a set: a set's order changes with PYTHONHASHSEED
    while len(words) < count:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3))))
        if split_of(word) == split and word not in words:
            words.append(word)
    return words


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
    labels = groups if named else _label_words(rng, split, len(groups))
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
        instruction=rng.choice(_part(INSTRUCTIONS["classify"], split)),
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
    labels = _label_words(rng, split, 2) if made_up else ["positive", "negative"]
    count = _shots(rng)
    polarity = [rng.random() < 0.5 for _ in range(count + 1)]
    examples = [({"text": _review(rng, p)}, labels[0] if p else labels[1]) for p in polarity[:-1]]
    good = polarity[-1]
    return _render(
        rng,
        instruction=rng.choice(_part(INSTRUCTIONS["sentiment"], split)),
        query="Review: {{ text }}\nSentiment:",
        output_type=Literal[tuple(labels)],
        examples=examples,
        query_input={"text": _review(rng, good)},
        answer=labels[0] if good else labels[1],
    )


def _code(rng: random.Random) -> str:
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(rng.choice(letters) for _ in range(rng.choice((3, 4))))


def _invented(rng: random.Random, split: Split) -> str:
    """A made-up capitalised word of ``split`` (a name or a place nobody has seen, never one
    of the real ones): copying it can only be done by reading it, which is what extracting a
    never-seen name needs."""

    def syllable() -> str:
        return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)

    while True:
        if rng.random() < 0.5:
            word = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3))))
        else:
            start = rng.choice(VOWELS) if rng.random() < 0.2 else ""
            word = start + "".join(syllable() for _ in range(rng.choice((1, 2, 2, 3))))
        word = word.capitalize()
        if split_of(word.lower()) == split and word not in _REAL_NAMES:
            return word


def _copy(rng: random.Random, split: Split) -> Sample:
    """Repeat a list of random items (dense induction: every answer token is a copy)."""

    def item() -> str:
        kinds = (
            lambda: _invented(rng, split),
            lambda: _code(rng),
            lambda: rng.choice(_part(FIRST_NAMES, split)),
            lambda: rng.choice(_part(CITIES, split)),
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
    keys = rng.sample(_part(FIRST_NAMES, split), count)
    value_of = {k: _code(rng) for k in keys}
    # Keys are asked again among the demonstrations too: every repeat is a lookup to learn.
    order = keys + [rng.choice(keys) for _ in range(rng.randrange(0, count + 2))]
    rng.shuffle(order)
    examples = [({"key": k}, value_of[k]) for k in order]
    asked = rng.choice(keys)
    return _render(
        rng,
        instruction=rng.choice(_part(INSTRUCTIONS["lookup"], split)),
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
        instruction=rng.choice(_part(INSTRUCTIONS["arithmetic"], split)),
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
        _invented(rng, split) if rng.random() < invented else rng.choice(_part(FIRST_NAMES, split))
    )
    last = (
        _invented(rng, split) if rng.random() < invented else rng.choice(_part(LAST_NAMES, split))
    )
    name = f"{first} {last}"
    age = rng.randrange(18, 90) if rng.random() < 0.8 else None
    city = None
    if rng.random() < 0.8:
        city = (
            _invented(rng, split) if rng.random() < invented else rng.choice(_part(CITIES, split))
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
    from ..files import load_prompt

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
        who = rng.choice(_part(FIRST_NAMES, split))
        group = rng.choice(sorted(GROUPS))
        thing = rng.choice(GROUPS[group].split())
        city = rng.choice(_part(CITIES, split))
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


def write_corpus(
    path: str | os.PathLike[str],
    count: int,
    *,
    seed: int = 0,
    split: Split = "train",
    families: Sequence[str] | None = None,
) -> Path:
    """Write ``count`` documents as JSON Lines (``{"family": ..., "text": ..., "answer": ...}``,
    ``answer`` the character offset where the answer starts, absent for plain text), the form
    ``promptkit train --corpus FILE.jsonl`` reads (one document per line; ``--answer-weight``
    adds a loss on the answers)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as out:
        for document in generate(count, seed=seed, split=split, families=families):
            record: dict[str, Any] = {"family": document.family, "text": document.text}
            if document.answer is not None:
                record["answer"] = document.answer
            out.write(json.dumps(record) + "\n")
    return target


def generate(
    count: int, *, seed: int = 0, split: Split = "train", families: Sequence[str] | None = None
) -> Iterator[Document]:
    """``count`` documents, deterministic under ``seed``, from the items of ``split``."""
    if split not in ("train", "heldout"):
        raise UsageError(f"split must be 'train' or 'heldout', got {split!r}")
    chosen = list(families or FAMILIES)
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        raise UsageError(f"unknown task families {unknown}; choose from {', '.join(FAMILIES)}")
    weights = [FAMILIES[f][1] for f in chosen]
    rng = random.Random(f"promptkit-corpus:{seed}:{split}")
    for _ in range(count):
        family = rng.choices(chosen, weights)[0]
        text, answer = FAMILIES[family][0](rng, split)
        yield Document(family, text, answer)


def _write_task(
    root: Path,
    name: str,
    instruction: str,
    label_of: dict[str, str],
    words: dict[str, list[str]],
) -> list[Path]:
    """One held-out classification task: its template (the first 4 words of each group are
    the demonstrations) and its dataset (the rest)."""
    from ..files import save_prompt

    pool = [
        Example(input={"text": words[g][i]}, output=label)
        for i in range(4)
        for g, label in label_of.items()
    ]
    described = ", ".join(f"{g} -> {label}" for g, label in label_of.items())
    prompt: Prompt[Any] = Prompt(
        instruction=instruction,
        query="Input: {{ text }}\nLabel:",
        output_type=Literal[tuple(label_of.values())],
        examples=pool,
        style="completion",
        name=name,
        description=f"Held-out: {described}.",
    )
    template = root / f"{name}.prompty"
    save_prompt(prompt, template)
    data = root / f"{name}.jsonl"
    with data.open("w", encoding="utf-8") as out:
        for group, label in label_of.items():
            for word in words[group][4:]:
                out.write(json.dumps({"text": word, "expected": label}) + "\n")
    return [template, data]


def write_eval_tasks(
    folder: str | os.PathLike[str], *, tasks: int = 8, seed: int = 0
) -> list[Path]:
    """Held-out evaluation sets for ``promptkit eval``: ``classify-N.prompty`` (a
    demonstration-defined classification whose label words and phrasing were never trained on;
    its 8 examples are the demonstration pool) with ``classify-N.jsonl`` (other words of the
    same groups); ``classify-N-mirror`` the same task with the two label words exchanged; and
    ``extract.jsonl`` (sentences about held-out people, for the bundled ``extract`` template).
    Returns the files written."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"promptkit-eval:{seed}")
    written = []
    for number in range(1, tasks + 1):
        groups = rng.sample(sorted(GROUPS), 2)
        labels = _label_words(rng, "heldout", 2)
        words = {g: rng.sample(GROUPS[g].split(), len(GROUPS[g].split())) for g in groups}
        instruction = rng.choice(_part(INSTRUCTIONS["classify"], "heldout"))
        # The mirror gives each group the other label word (listed in the same group order):
        # with no demonstrations, nothing in a prompt says which made-up word is which group,
        # so the two average to chance unless the model follows a cue such as the listing order.
        for name, named in (
            (f"classify-{number}", labels),
            (f"classify-{number}-mirror", labels[::-1]),
        ):
            written += _write_task(
                root, name, instruction, dict(zip(groups, named, strict=True)), words
            )
    extract = root / "extract.jsonl"
    with extract.open("w", encoding="utf-8") as out:
        for _ in range(50):
            sentence, record = person(rng, "heldout")
            out.write(json.dumps({"text": sentence, "expected": record}) + "\n")
    written.append(extract)
    return written
