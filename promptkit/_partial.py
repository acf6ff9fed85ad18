"""The output so far: what a model's unfinished text already says, validated by pydantic.

:class:`PartialOutput` follows one attempt's text as it grows and gives its *partial*:

- free text: the text so far, without surrounding whitespace (as :meth:`OutputSpec.parse`);
  a ``Regex`` / ``Lark`` text: the text so far as written;
- labels, numbers, booleans: the value once the text so far parses as one, else None;
- JSON lists (and other JSON values): pydantic's partial validation
  (``experimental_allow_partial``) of the JSON so far, so a list grows item by item (an
  unfinished last item is left out until it validates);
- objects: an instance of the output model's *partial model* (:func:`partial_model`): the same
  fields, each None until it arrives, filled in as the JSON so far validates with pydantic's
  partial JSON support (``trailing-strings``: a string field grows as it is written).

The JSON is never repaired by hand: pydantic-core reads the unfinished document. Text that does
not validate yet (a field's regex or label only half written) keeps the last partial, so a
partial never goes backwards within an attempt. Each update reads the whole text so far, in
time linear in its length, which ``max_tokens`` bounds.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from contextlib import suppress
from functools import lru_cache
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from ._outputs import strip_annotated
from ._parsing import OutputSpec
from .errors import OutputParseError

__all__ = ["PartialOutput", "partial_model"]

_PartialMode = Literal["on", "trailing-strings"]


@lru_cache(maxsize=128)
def partial_model(model: type[BaseModel]) -> type[BaseModel]:
    """The partial model of ``model``: a model with the same fields (their constraints kept),
    each optional and None until given, nested models and lists of models partial in turn.

    The model's own validators are left out: they judge the whole answer, which the final
    validation does.
    """
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = _partial_type(info.annotation)
        if info.metadata:
            annotated: tuple[Any, ...] = (annotation, *info.metadata)
            annotation = typing.Annotated[annotated]
        fields[name] = (
            Optional[annotation],
            Field(default=None, alias=info.alias, validation_alias=info.validation_alias),
        )
    config = ConfigDict(populate_by_name=True)
    built: type[BaseModel] = create_model(
        f"Partial{model.__name__}", __config__=config, __module__=model.__module__, **fields
    )
    return built


def _partial_type(annotation: Any) -> Any:
    """``annotation`` with its models (directly, as list items or in a union) made partial."""
    inner = strip_annotated(annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return partial_model(inner)
    origin = typing.get_origin(inner)
    if origin is list:
        (item,) = typing.get_args(inner) or (Any,)
        return list[_partial_type(item)]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        members: tuple[Any, ...] = tuple(_partial_type(a) for a in typing.get_args(inner))
        return typing.Union[members]
    return annotation


class PartialOutput:
    """The partial of one attempt's growing text (see the module docstring)."""

    def __init__(self, spec: OutputSpec, inputs: Mapping[str, Any] | None):
        self._spec = spec
        self._inputs = inputs
        self._context = None if inputs is None else {"inputs": inputs}
        self._value: Any = None
        self._start: int | None = None  # where the JSON starts in the text, once seen
        self._scanned = 0  # how much of the text was searched for that start
        self._adapter: TypeAdapter[Any] | None = None
        self._mode: _PartialMode = "on"
        if spec.kind == "json":
            inner = strip_annotated(spec.type)
            if spec.is_object:
                self._adapter = _adapter(partial_model(inner))
                self._mode = "trailing-strings"
            else:
                self._adapter = spec.adapter

    @property
    def value(self) -> Any:
        """The partial so far (None before anything validates)."""
        return self._value

    def update(self, text: str) -> Any:
        """The partial of ``text`` (the whole attempt so far), or the last one when ``text``
        does not validate yet."""
        kind = self._spec.kind
        if kind == "text":
            self._value = text.strip()
        elif kind == "grammar":
            self._value = text
        elif kind == "json":
            self._update_json(text)
        else:
            with suppress(OutputParseError):
                self._value = self._spec.parse(text, self._inputs)
        return self._value

    def _update_json(self, text: str) -> None:
        assert self._adapter is not None
        if self._start is None:
            opening = "{" if self._spec.is_object else "{["
            found = (i for i in range(self._scanned, len(text)) if text[i] in opening)
            self._start = next(found, None)
            self._scanned = len(text)
            if self._start is None:
                return
        with suppress(ValidationError):
            self._value = self._adapter.validate_json(
                text[self._start :],
                experimental_allow_partial=self._mode,
                context=self._context,
            )


@lru_cache(maxsize=128)
def _adapter(model: type[BaseModel]) -> TypeAdapter[Any]:
    return TypeAdapter(model)
