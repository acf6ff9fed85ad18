"""The items generated documents are made of, and the split each item belongs to.

Names, cities, made-up label words and instruction phrasings are split in two by a fixed hash
(:func:`split_of`): the training corpus uses one part, held-out evaluation the other, so that
evaluation measures what the model reads from the prompt, not what it memorised.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Literal

__all__ = [
    "BAD",
    "CITIES",
    "CONNECTORS",
    "FIRST_NAMES",
    "GOOD",
    "GROUPS",
    "INSTRUCTIONS",
    "LAST_NAMES",
    "SYLLABLES",
    "THINGS",
    "TRANSFORMS",
    "Split",
    "invented_word",
    "items_of",
    "label_words",
    "random_code",
    "split_of",
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


def items_of(items: Sequence[str], split: Split) -> list[str]:
    """The items of ``split`` (all of them, should none fall in it)."""
    chosen = [i for i in items if split_of(i) == split]
    return chosen or list(items)


def label_words(rng: random.Random, split: Split, count: int) -> list[str]:
    """Made-up label words (two or three syllables) of the split, all different."""
    words: list[str] = []  # a list, not a set: a set's order changes with PYTHONHASHSEED
    while len(words) < count:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3))))
        if split_of(word) == split and word not in words:
            words.append(word)
    return words


def random_code(rng: random.Random) -> str:
    """A code of 3 or 4 capital letters and digits (a lookup value, an item to copy)."""
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(rng.choice(letters) for _ in range(rng.choice((3, 4))))


def invented_word(rng: random.Random, split: Split) -> str:
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
