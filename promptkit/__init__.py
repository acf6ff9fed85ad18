"""promptkit: typed prompt templates for GPT-style models.

A prompt is code: a typed template (instruction, demonstrations, query) rendered with Jinja2 from
pydantic-typed input, sent through one backend interface, and parsed and validated into the
declared output type.

Heavy parts load on first use (PEP 562), so ``import promptkit`` is quick and never imports
torch, transformers or openai.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "CachedBackend",
    "Example",
    "Lark",
    "Message",
    "Prompt",
    "Regex",
    "ResponseCache",
    "Result",
    "Selection",
    "SpanOf",
    "StreamEvent",
    "TemplateLimits",
    "Tool",
    "ToolCall",
    "ToolStep",
    "__version__",
    "backends",
    "bundled_templates",
    "errors",
    "get_backend",
    "load_prompt",
    "multiple_choice",
    "parse_output",
    "save_prompt",
]

_LAZY: dict[str, tuple[str, str | None]] = {
    "Attempt": ("promptkit._runloop", "Attempt"),
    "CachedBackend": ("promptkit._cache", "CachedBackend"),
    "Example": ("promptkit._prompt", "Example"),
    "Lark": ("promptkit._outputs", "Lark"),
    "Message": ("promptkit._conversation", "Message"),
    "Prompt": ("promptkit._prompt", "Prompt"),
    "Regex": ("promptkit._outputs", "Regex"),
    "ResponseCache": ("promptkit._cache", "ResponseCache"),
    "Result": ("promptkit._runloop", "Result"),
    "Selection": ("promptkit._demos", "Selection"),
    "SpanOf": ("promptkit._outputs", "SpanOf"),
    "StreamEvent": ("promptkit._streaming", "StreamEvent"),
    "TemplateLimits": ("promptkit._template_limits", "TemplateLimits"),
    "Tool": ("promptkit._tools", "Tool"),
    "ToolCall": ("promptkit._tools", "ToolCall"),
    "ToolStep": ("promptkit._tools", "ToolStep"),
    "backends": ("promptkit.backends", None),
    "bundled_templates": ("promptkit._files", "bundled_templates"),
    "errors": ("promptkit.errors", None),
    "get_backend": ("promptkit.backends", "get_backend"),
    "load_prompt": ("promptkit._files", "load_prompt"),
    "multiple_choice": ("promptkit._scoring", "multiple_choice"),
    "parse_output": ("promptkit._parsing", "parse_output"),
    "save_prompt": ("promptkit._files", "save_prompt"),
}

if TYPE_CHECKING:
    from . import backends, errors
    from ._cache import CachedBackend, ResponseCache
    from ._conversation import Message
    from ._demos import Selection
    from ._files import bundled_templates, load_prompt, save_prompt
    from ._outputs import Lark, Regex, SpanOf
    from ._parsing import parse_output
    from ._prompt import Example, Prompt
    from ._runloop import Attempt, Result
    from ._scoring import multiple_choice
    from ._streaming import StreamEvent
    from ._template_limits import TemplateLimits
    from ._tools import Tool, ToolCall, ToolStep
    from .backends import get_backend


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'promptkit' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
