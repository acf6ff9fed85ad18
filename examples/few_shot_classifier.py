"""A few-shot classifier: the same prompt rendered with 0, 1 and 3 demonstrations.

python examples/few_shot_classifier.py                 # offline, scripted replies
python examples/few_shot_classifier.py --backend SPEC
"""

from __future__ import annotations

import argparse
import sys
from typing import Literal

import promptkit as pk

Topic = Literal["sports", "politics", "technology"]

prompt = pk.Prompt(
    instruction="Classify the headline by topic.",
    query="Headline: {{ headline }}\nTopic:",
    output_type=Topic,
    style="completion",  # GPT-2 style: one string, each demonstration "query answer"
    examples=[
        pk.Example(input={"headline": "Striker scores twice in cup final"}, output="sports"),
        pk.Example(input={"headline": "Parliament passes new budget"}, output="politics"),
        pk.Example(
            input={"headline": "Chipmaker unveils faster laptop processor"}, output="technology"
        ),
    ],
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", help="backend spec (default: scripted replies)")
    args = parser.parse_args()
    headline = {"headline": "Senate debates election reform"}

    for shots in (0, 1, 3):
        print(f"--- {shots}-shot prompt ---")
        print(prompt.render(headline, shots=shots))

    backend = (
        pk.get_backend(args.backend)
        if args.backend
        else pk.backends.ScriptedBackend([" Politics\n\nHeadline: ..."] * 3)
    )
    for shots in (0, 1, 3):
        result = prompt.run(headline, backend=backend, shots=shots)
        print(f"{shots}-shot answer: {result.output}")


if __name__ == "__main__":
    try:
        main()
    except pk.errors.PromptkitError as exc:  # one clear line, as the promptkit command prints
        sys.exit(f"error: {' '.join(str(exc).split())}")
