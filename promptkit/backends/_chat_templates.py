"""A model's own chat template: read from its files, rendered in promptkit's sandbox.

An instruction-tuned model ships a Jinja2 template that turns chat messages into the text it was
trained on (``chat_template`` in tokenizer_config.json or chat_template.jinja beside it;
``tokenizer.chat_template`` in a GGUF file's metadata). The template comes with a downloaded
model, so it is untrusted code: it renders in the same sandboxed environment, under the same
resource limits, as promptkit's own templates (:mod:`promptkit._template_limits`), with the
options transformers renders chat templates with (``trim_blocks``, ``lstrip_blocks``, loop
controls, ``raise_exception``), so the text equals ``apply_chat_template``'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
from jinja2 import meta
from jinja2.exceptions import SecurityError

from .. import _template_limits as _limits
from .._template_limits import LIMITS, TemplateLimits
from .._templating import sandboxed_environment
from ..errors import ConfigurationError, TemplateError
from ._messages import Message
from ._tool_calls import ToolSpec, template_messages, template_tools

__all__ = ["ChatTemplate", "folder_chat_template"]


def _raise_exception(message: str) -> NoReturn:
    """``raise_exception(...)`` of chat templates: the template refuses the conversation."""
    raise TemplateError(f"the model's chat template refused the messages: {message}")


def _strftime_now(format: str) -> str:
    """``strftime_now(...)`` of chat templates (some put today's date in the system prompt)."""
    return datetime.now().strftime(format)


_CHAT_ENV = sandboxed_environment(trim_blocks=True, lstrip_blocks=True)
_CHAT_ENV.globals["raise_exception"] = _raise_exception
_CHAT_ENV.globals["strftime_now"] = _strftime_now


class ChatTemplate:
    """A model's chat template with its special tokens; :meth:`render` gives the prompt text.

    Raises TemplateError at construction for a template that does not compile."""

    def __init__(
        self,
        source: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        name: str = "<chat template>",
        limits: TemplateLimits = LIMITS,
    ):
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.name = name
        self.limits = limits
        try:
            self._template = _CHAT_ENV.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"the model's chat template does not compile: {exc.message}",
                source=name,
                line=exc.lineno,
            ) from None
        except RecursionError:
            raise TemplateError("the model's chat template nests too deeply", source=name) from None
        # a tools slot: the template reads a ``tools`` variable (tools are shown there)
        self.takes_tools = "tools" in meta.find_undeclared_variables(_CHAT_ENV.parse(source))

    def __repr__(self) -> str:
        return f"<ChatTemplate {self.name!r} ({len(self.source):,} characters)>"

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[ToolSpec] = (),
    ) -> str:
        """The prompt text of ``messages`` (ending with the assistant's turn opened, when
        ``add_generation_prompt``), with ``tools`` in the template's tools slot (transformers'
        shapes: see :func:`~promptkit.backends._tool_calls.template_messages`). Raises
        TemplateError for a template that fails or goes over a limit (its message names the
        limit, e.g. ``max_steps``)."""
        context: dict[str, Any] = {
            "messages": template_messages(messages),
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if tools:
            context["tools"] = template_tools(tools)
        _limits.start(self.limits)
        try:
            return self._template.render(context)
        except TemplateError as exc:
            raise TemplateError(exc.reason, source=self.name) from None
        except RecursionError:
            raise TemplateError(
                "template limit 'max_depth' exceeded: Python's recursion limit was reached "
                "while rendering the model's chat template",
                source=self.name,
            ) from None
        except MemoryError:
            raise TemplateError(
                "rendering the model's chat template ran out of memory", source=self.name
            ) from None
        except SecurityError as exc:
            raise TemplateError(
                f"unsafe template operation refused: {exc}", source=self.name
            ) from None
        except jinja2.TemplateError as exc:
            raise TemplateError(str(exc), source=self.name) from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateError(
                f"the model's chat template failed: {type(exc).__name__}: {exc}", source=self.name
            ) from None


def _token_text(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def folder_chat_template(root: Path) -> ChatTemplate | None:
    """The chat template of a Hugging Face model folder (chat_template.jinja, else
    ``chat_template`` in tokenizer_config.json: a string, or a list of named templates of which
    ``default`` is used), with its ``bos_token``/``eos_token``; None when it has none.

    Raises ConfigurationError for an unreadable tokenizer_config.json, TemplateError for a
    template that does not compile."""
    settings_path = root / "tokenizer_config.json"
    settings: dict[str, Any] = {}
    if settings_path.is_file():
        try:
            loaded = json.loads(settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read {settings_path}: {exc}") from None
        settings = loaded if isinstance(loaded, dict) else {}
    jinja_file = root / "chat_template.jinja"
    source: Any = settings.get("chat_template")
    name = str(settings_path)
    if jinja_file.is_file():
        source, name = jinja_file.read_text(encoding="utf-8"), str(jinja_file)
    elif isinstance(source, list):
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    if not isinstance(source, str) or not source.strip():
        return None
    return ChatTemplate(
        source,
        bos_token=_token_text(settings.get("bos_token")),
        eos_token=_token_text(settings.get("eos_token")),
        name=name,
    )
