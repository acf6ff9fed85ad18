from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from promptkit._schema import type_from_schema
from promptkit.errors import TemplateError


def test_nested_objects_arrays_enums_and_optional_fields():
    schema = {
        "title": "Order",
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "status": {"enum": ["open", "closed"]},
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}$"}},
                    "required": ["sku"],
                },
            },
            "note": {"type": ["string", "null"]},
            "price": {"type": "number", "exclusiveMinimum": 0},
        },
        "required": ["id", "status", "items"],
        "additionalProperties": False,
    }
    model = type_from_schema(schema)
    order = model.model_validate({"id": 1, "status": "open", "items": [{"sku": "ABC"}]})
    assert order.note is None and order.price is None
    for bad in (
        {"id": 0, "status": "open", "items": [{"sku": "ABC"}]},
        {"id": 1, "status": "gone", "items": [{"sku": "ABC"}]},
        {"id": 1, "status": "open", "items": []},
        {"id": 1, "status": "open", "items": [{"sku": "abc"}]},
        {"id": 1, "status": "open", "items": [{"sku": "ABC"}], "extra": 1},
        {"id": 1, "status": "open", "items": [{"sku": "ABC"}], "price": 0},
    ):
        with pytest.raises(ValidationError):
            model.model_validate(bad)


def test_pydantic_schemas_round_trip():
    class Inner(BaseModel):
        x: int = Field(ge=0)

    class Outer(BaseModel):
        inner: Inner
        tags: list[str]
        mode: Literal["a", "b"] = "a"
        maybe: Inner | None = None

    model = type_from_schema(Outer.model_json_schema())
    value = {"inner": {"x": 1}, "tags": ["t"], "maybe": {"x": 2}}
    assert model.model_validate(value).model_dump() == Outer.model_validate(value).model_dump()
    assert model.model_json_schema()["required"] == ["inner", "tags"]
    with pytest.raises(ValidationError):
        model.model_validate({"inner": {"x": -1}, "tags": []})


@pytest.mark.parametrize(
    "schema, match",
    [
        ({"type": "object", "properties": {"a": {"type": "string"}}, "allOf": []}, "allOf"),
        ({"type": "tuple"}, "type 'tuple'"),
        ({"$ref": "#/$defs/Missing"}, "Missing"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "'b'"),
        ({"type": "string", "pattern": "("}, "invalid pattern"),
        ({"type": "object", "properties": {"not valid": {"type": "string"}}}, "identifier"),
        ({"description": "no type"}, "no 'type'"),
        ({"enum": []}, "empty enum"),
        ("string", "mapping"),
    ],
)
def test_unsupported_schemas_name_the_problem(schema, match):
    with pytest.raises(TemplateError, match=match):
        type_from_schema(schema)


def test_scalars_and_maps():
    assert type_from_schema({"type": "object"}) == dict[str, Any]
    from pydantic import TypeAdapter

    adapter = TypeAdapter(
        type_from_schema({"type": "object", "additionalProperties": {"type": "integer"}})
    )
    assert adapter.validate_python({"a": 1}) == {"a": 1}
    with pytest.raises(ValidationError):
        adapter.validate_python({"a": "x"})
