"""Typed extraction: a pydantic model in, validated records out.

python examples/typed_extraction.py                 # offline, scripted replies
python examples/typed_extraction.py --backend SPEC  # e.g. openai:gpt-4o-mini, hf:gpt2
"""

from __future__ import annotations

import argparse
import sys

from pydantic import BaseModel, Field

import promptkit as pk


class Ticket(BaseModel):
    text: str = Field(description="A customer's message")


class Issue(BaseModel):
    product: str
    severity: int = Field(ge=1, le=5, description="1 = cosmetic, 5 = outage")
    refund_requested: bool


prompt = pk.Prompt(
    instruction="Extract the support issue from the customer's message.",
    query="Message: {{ text }}",
    input_type=Ticket,
    output_type=Issue,
    examples=[
        pk.Example(
            input={"text": "My kettle's lid squeaks a little."},
            output=Issue(product="kettle", severity=1, refund_requested=False),
        )
    ],
)

SCRIPTED = [
    # A weak model's first answer fails validation; the error goes back and it corrects itself.
    '{"product": "router", "severity": "high", "refund_requested": true}',
    'Sorry! {"product": "router", "severity": 5, "refund_requested": true}',
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", help="backend spec (default: scripted replies)")
    args = parser.parse_args()
    backend = (
        pk.get_backend(args.backend) if args.backend else pk.backends.ScriptedBackend(SCRIPTED)
    )

    result = prompt.run(
        {"text": "The router dies hourly and the whole office is offline. I want my money back."},
        backend=backend,
    )
    issue: Issue = result.output
    print(issue.model_dump_json(indent=2))
    for number, attempt in enumerate(result.attempts, start=1):
        print(f"attempt {number}: {attempt.error or 'accepted'}")


if __name__ == "__main__":
    try:
        main()
    except pk.errors.PromptkitError as exc:  # one clear line, as the promptkit command prints
        sys.exit(f"error: {' '.join(str(exc).split())}")
