"""Every wire model's `v` is a JSON integer (docs/protocol.md 2.5: no coercion). pydantic's
Literal[1] takes `true` and `1.0` for 1, and Literal[2] takes `2.0`, even in strict mode; the
signature of an envelope header, a roster or a channel event is checked over the model's form,
so a relay could turn `"v": 1` into `"v": true` without breaking it. Found by a review (the
receipt's case was fixed first, 5fb82f1); the others share its type now (exchange.model.Version1)."""

from __future__ import annotations

import inspect
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from exchange import model
from exchange.protocol import epoch_model, epoch_support, roster2_model, rotation

MODULES = (model, epoch_model, epoch_support, roster2_model, rotation)
VERSIONED = sorted(
    {
        cls
        for module in MODULES
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseModel) and "v" in cls.model_fields
    },
    key=lambda cls: cls.__qualname__,
)


def versions(cls: type[BaseModel]) -> tuple[int, ...]:
    return get_args(cls.model_fields["v"].annotation)


def v_errors(cls: type[BaseModel], value: Any) -> list[str]:
    try:
        cls.model_validate({"v": value})
    except ValidationError as exc:
        return [e["msg"] for e in exc.errors() if e["loc"] == ("v",)]
    return []


def test_the_versioned_wire_models_are_found() -> None:
    names = {cls.__name__ for cls in VERSIONED}
    assert {"EnvelopeHeader", "Receipt", "ChannelEvent", "EpochRecord", "RotationRequestBody"} <= names, names


@pytest.mark.parametrize("cls", VERSIONED, ids=lambda cls: cls.__name__)
def test_a_version_that_is_not_a_json_integer_is_refused(cls: type[BaseModel]) -> None:
    for good in versions(cls):
        assert v_errors(cls, good) == []
    for bad in (True, False, 1.0, 2.0, "1", "2"):
        errors = v_errors(cls, bad)
        assert errors and "JSON integer" in errors[0], (cls.__name__, bad, errors)
