"""The code explainer: the bundled four-part template (summary, methods, issues, optimisations).

    python examples/code_explainer.py path/to/file.py [--language German] [--backend SPEC]

Without --backend it runs offline on a scripted reply, to show the flow and the typed result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import promptkit as pk

SCRIPTED_REVIEW = json.dumps(
    {
        "summary": "Defines the command-line entry point of this example.",
        "methods": [
            {"name": "main", "walkthrough": "Parses arguments, loads the template, runs it."}
        ],
        "potential_issues": ["Reads the whole file into memory."],
        "optimizations": ["Stream very large files in chunks."],
    }
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", nargs="?", default=__file__, help="source file to explain")
    parser.add_argument("--language", default="English", help="language of the explanation")
    parser.add_argument("--backend", help="backend spec (default: a scripted reply)")
    args = parser.parse_args()

    explainer = pk.load_prompt("code_explanation")
    try:
        code = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"cannot read {args.file!r}: {exc}")
    inputs = {"code": code, "answer_language": args.language}
    backend = (
        pk.get_backend(args.backend)
        if args.backend
        else pk.backends.ScriptedBackend([SCRIPTED_REVIEW])
    )
    if not args.backend:
        print("No --backend given: this is the prompt a model would receive.\n")
        for message in explainer.render(inputs):
            print(f"[{message['role']}]\n{message['content']}\n")
        print("The typed result below comes from a scripted reply, not a model.\n")
    explanation = explainer.run(inputs, backend=backend).output

    print("Summary:", explanation.summary)
    for method in explanation.methods:
        print(f"  {method.name}: {method.walkthrough}")
    print("Potential issues:", *explanation.potential_issues, sep="\n  - ")
    print("Optimizations:", *explanation.optimizations, sep="\n  - ")


if __name__ == "__main__":
    try:
        main()
    except pk.errors.PromptkitError as exc:  # one clear line, as the promptkit command prints
        sys.exit(f"error: {' '.join(str(exc).split())}")
