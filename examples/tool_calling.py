"""Tool calling: typed Python functions the model may call; promptkit runs them and sends the
results back until the model answers.

python examples/tool_calling.py                 # offline, a scripted tool-calling model
python examples/tool_calling.py --backend SPEC  # e.g. openai:gpt-4o-mini, or scratch
                                                # (promptkit-mini, which may just answer)
"""

from __future__ import annotations

import argparse
import sys
from typing import Literal

import promptkit as pk
from promptkit.backends import FunctionCall, GenerationConfig, ScriptedBackend

STOCK = {"kettle": 12, "router": 0, "lamp": 3}


def check_stock(product: Literal["kettle", "router", "lamp"]) -> int:
    """How many of a product are in the warehouse.

    Args:
        product: The product's name.
    """
    return STOCK[product]


prompt = pk.Prompt(
    instruction="Answer the customer. Check the stock before promising a delivery.",
    query="Customer: {{ question }}",
)

SCRIPTED = [
    # The model calls the tool; promptkit validates the arguments, runs it, sends the result back.
    FunctionCall(name="check_stock", arguments='{"product": "router"}', id="call_1"),
    "Sorry, the router is out of stock; we will write when it is back.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", help="backend spec (default: scripted replies)")
    args = parser.parse_args()
    backend = (
        pk.get_backend(args.backend) if args.backend else ScriptedBackend(SCRIPTED, tools=True)
    )

    result = prompt.run(
        {"question": "Can you send me a router tomorrow?"},
        backend=backend,
        tools=[pk.Tool(check_stock)],
        run_tools=True,
        max_steps=3,
        config=GenerationConfig(max_tokens=100),  # room for the tools in a small context
    )
    for number, step in enumerate(result.tool_steps, start=1):
        for call, value in zip(step.calls, step.results, strict=True):
            print(f"step {number}: {call.name}({call.arguments.model_dump_json()}) -> {value}")
    print(f"answer: {result.output}")


if __name__ == "__main__":
    try:
        main()
    except pk.errors.PromptkitError as exc:  # one clear line, as the promptkit command prints
        sys.exit(f"error: {' '.join(str(exc).split())}")
