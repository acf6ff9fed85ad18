"""Import time of promptkit against jinja2 + pydantic, in fresh interpreters.

    python bench/import_time.py [--runs 21]

Each figure is the median over fresh interpreters of the time spent in the import statement
(perf_counter around it, so interpreter start-up is excluded). Targets (issue 2): `import
promptkit` under 0.15 s and under 1.5x `import jinja2, pydantic`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CASES = {
    "import promptkit": "import promptkit",
    "import promptkit + first use of Prompt": "import promptkit; promptkit.Prompt",
    "baseline: import jinja2, pydantic": "import jinja2, pydantic",
    "baseline: jinja2.sandbox + pydantic.BaseModel": (
        "import jinja2.sandbox; from pydantic import BaseModel, TypeAdapter"
    ),
}


def measure(statement: str, runs: int) -> float:
    code = f"import time; t = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        times.append(float(out.stdout))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    results = {name: measure(statement, args.runs) for name, statement in CASES.items()}
    for name, seconds in results.items():
        print(f"{name:<48} {seconds * 1000:8.1f} ms")
    light = results["import promptkit"] / results["baseline: import jinja2, pydantic"]
    full = (
        results["import promptkit + first use of Prompt"]
        / results["baseline: jinja2.sandbox + pydantic.BaseModel"]
    )
    print(
        f"ratio import promptkit / import jinja2, pydantic:          {light:.2f}x (target < 1.5x)"
    )
    print(f"ratio promptkit with Prompt / jinja2.sandbox + BaseModel:  {full:.2f}x")
    ok = results["import promptkit"] < 0.15 and light < 1.5
    print("import target:", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
