"""Decoding steps through ``torch.compile`` (``compile=True`` on a scratch backend).

After the prompt, each decoding step feeds one new position per row. With ``compile=True``
those steps run a graph that inductor compiles with the model's weights frozen into it, its
matrix products autotuned among PyTorch's own kernels and the C++ kernels inductor generates
(on a CPU with AMX, the int4 products at several rows ran on AMX tiles). So the small
operations of a step are fused, and the products take faster kernels.

What stays eager:

- the prompt's pass, which has a different length each request;
- the several positions a grammar's fast-forward feeds at once;
- scoring, and the output projection (see ``_int8_head``).

There are two graphs: one for a single row, and one for two rows or more. In the second, the
batch size is symbolic, so other batch sizes, rows that finish and leave the batch, and
requests of other lengths reuse it. Each graph is compiled on its first use, or at once by
``ScratchBackend.warm_up``. On a 2-core CPU with AMX, SmolLM2-135M in int4 took 2.4 minutes
(one row) and 2.9 minutes (batches) with inductor's caches empty, and 29 s and 47 s in a later
process with the same weights. That later process loaded the compiled kernels from inductor's
on-disk FX graph cache (63 MB for both graphs in a fresh cache folder). ``bench/RESULTS.md``
has the figures. So compiling pays for a server or a long evaluation, not for one short
request. A compilation that fails is a BackendError.

The weights are frozen at that first call. A model changed afterwards is not seen; promptkit
never changes a loaded backend's weights.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ...errors import BackendError, ConfigurationError
from .gpt2 import KVCache

__all__ = ["CompiledStep", "check_compilable", "weights_fingerprint"]

_logger = logging.getLogger("promptkit")

# Inductor's settings while the step runs (a call may recompile): weights as constants, which
# lets it repack them for its own kernels; products autotuned between its C++ kernels and
# ATen's. Not torch.compile's options=, which left freezing and autotuning off in PyTorch
# 2.13.
_SETTINGS: dict[str, Any] = {
    "freezing": True,
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    # autotuning's reports, which it writes to stderr: a server's log is not the place
    "autotune_num_choices_displayed": 0,
    "max_autotune_report_choices_stats": False,
}
# Dynamo's: the model's Python floats (the norms' epsilon) as the constants they are. With
# dynamic=True they were traced as symbols first, which inductor then specialized, restarting
# the whole trace: a third of each graph's compile time went that way.
_TRACING: dict[str, Any] = {"specialize_float": True}
# Inductor's settings and the warnings filters are process-wide: one compiled step at a time.
_PROCESS_WIDE = threading.Lock()


def check_compilable(device: torch.device) -> None:
    """Raise ConfigurationError unless ``compile=True`` can work here: on the CPU, with a C++
    compiler for inductor's kernels."""
    if device.type != "cpu":
        raise ConfigurationError(
            f"scratch: compile=True runs on the CPU only (it is tested there); on {device.type} "
            "leave compile off"
        )
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # inductor's InvalidCxxCompiler, or a failed probe of one
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigurationError(
            f"scratch: compile=True needs a C++ compiler for torch.compile's CPU kernels "
            f"({first}); install g++ or clang (or set CXX), or leave compile off"
        ) from None


class _Step(nn.Module):
    """The model's forward pass as the module that ``torch.compile`` freezes. The cache's
    length comes in as an argument (``past``), which a dynamic compilation treats as a symbol
    from the start; read from the cache object, it would be a constant in the first graph and
    cost a second compilation at the next step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor,
        key_valid: torch.Tensor | None,
        cache: KVCache,
        past: int,
    ) -> torch.Tensor:
        cache.length = past
        hidden: torch.Tensor = self.model(
            idx, positions=positions, key_valid=key_valid, cache=cache
        )
        return hidden


class CompiledStep:
    """A model's one-position decoding step, compiled on first use (see the module's notes).

    Call it as the model is called, with ``key_valid`` always given (a mask for every step,
    padded batch or not, so that one graph serves both).
    """

    def __init__(self, model: nn.Module):
        import torch._dynamo.config as dynamo_config
        import torch._inductor.config as inductor_config

        # patches, entered around each call (PyTorch's patch objects may be entered again)
        self._settings = (inductor_config.patch(_SETTINGS), dynamo_config.patch(_TRACING))
        self._weights: Any = None  # the patch naming the weights, made at the first step
        self._model = model
        # Dynamo keeps its graphs, and its limit of 8 recompilations before it falls back to
        # eager without a word, per code object: each step gets a forward of its own, so that
        # models compiled earlier in the process neither use up this one's budget nor keep
        # their frozen weights alive once their backends are gone.
        forward = _Step.forward
        own = types.FunctionType(forward.__code__.replace(), forward.__globals__, "forward")
        step = type("_Step", (_Step,), {"forward": own})(model)
        with _PROCESS_WIDE, _torch_s_own_warnings_silenced():
            self._compiled: Any = torch.compile(step, dynamic=True)
        self._compiled_for: set[bool] = set()  # whether a graph for one row / more is built

    def __call__(
        self,
        idx: torch.Tensor,
        *,
        positions: torch.Tensor,
        key_valid: torch.Tensor | None,
        cache: KVCache,
    ) -> torch.Tensor:
        """Hidden states ``(B, 1, n_embd)`` of ``idx`` ``(B, 1)``, as ``model(...)`` gives."""
        if idx.size(1) != 1:
            raise ValueError(f"a compiled step takes one position per row, got {idx.size(1)}")
        single = idx.size(0) == 1
        if single not in self._compiled_for:
            _logger.info(
                "scratch: compiling the decoding step for %s (once per backend; a minute or "
                "more, see bench/RESULTS.md)",
                "one row" if single else "batches",
            )
            self._compiled_for.add(single)
        if self._weights is None:
            # any call may (re)compile: the settings and silenced warnings hold for each, and
            # the cache key names the weights. Inductor's FX graph cache keeps compiled graphs
            # on disk (a later process with the same weights took half the time), but its key
            # leaves frozen constants out: a second model of the same shape was handed the
            # first one's weights (a test checks this no longer happens)
            self._weights = torch.compiler.config.patch(  # type: ignore[attr-defined]
                cache_key_tag=f"promptkit-weights-{weights_fingerprint(self._model)}"
            )
        # contiguous: a view's strides would be another graph (they are guarded on)
        idx, positions = idx.contiguous(), positions.contiguous()
        settings, tracing = self._settings
        with _PROCESS_WIDE, settings, tracing, self._weights, _torch_s_own_warnings_silenced():
            try:
                hidden: torch.Tensor = self._compiled(
                    idx, positions, key_valid, cache, cache.length
                )
            except torch._dynamo.exc.TorchDynamoException as exc:  # inductor's errors too
                raise BackendError(
                    f"scratch: compiling the decoding step failed ({_reason(exc)}); load the "
                    "model without compile (drop +compile from the spec, or pass "
                    "compile=False). PyTorch's error is this one's cause"
                ) from exc
        return hidden


def weights_fingerprint(model: nn.Module) -> str:
    """A BLAKE2 digest of every parameter and buffer of ``model``: names, shapes, dtypes and
    bytes (about a second for SmolLM2 in float32)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {tuple(data.shape)} {data.dtype};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _reason(exc: Exception) -> str:
    """What failed, in a line: the compiler's own error where dynamo wraps one."""
    if isinstance(exc, torch._dynamo.exc.BackendCompilerFailed):
        exc = exc.inner_exception
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


@contextmanager
def _torch_s_own_warnings_silenced() -> Iterator[None]:
    """PyTorch's warnings about its own code, which compiling imports and runs
    (``torch.jit.script_method`` in ``torch.utils.mkldnn``, ``TypedStorage`` in inductor's
    lowerings, and the like): nothing a caller can act on."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=r"torch(\.|$)")
        yield
