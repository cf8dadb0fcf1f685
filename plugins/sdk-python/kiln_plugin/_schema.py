"""The payload: a dataclass, from which the JSON Schema is derived and into which the
payload JSON is parsed.

Deriving both from one dataclass keeps them from disagreeing: the host refuses a payload
that fails the schema before the job exists (an HTTP 400 for the client), and the parser
checks the same rules again, so unit tests, which have no host, catch the payloads the
host would refuse.

Supported field types: `str`, `int`, `float`, `bool`, `list[T]`, `dict[str, T]`,
`Optional[T]` (null allowed), `Literal[...]`, `typing.Any`, and nested dataclasses. A field
with a default is not required. Constraints go in `typing.Annotated`:
`Annotated[str, Length(1, 500), Pattern(r"\\S"), Description("...")]`. `FileId` is a `str`
holding the id of an uploaded file (`format: kiln-file`), which the job may then read
through `kiln_plugin.files`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from ._events import to_json
from .errors import InvalidInput

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class Range:
    """Bounds of an `int` or `float` field, both inclusive: `Range(1, 10)`, `Range(min=0)`."""

    min: Optional[float] = None
    max: Optional[float] = None


@dataclass(frozen=True)
class Length:
    """Length bounds, inclusive: characters of a `str`, items of a `list`."""

    min: Optional[int] = None
    max: Optional[int] = None


@dataclass(frozen=True)
class Pattern:
    """A regular expression a `str` field must contain a match of (JSON Schema `pattern`,
    unanchored: `Pattern(r"\\S")` means "not blank"). Keep to syntax that JSON Schema's
    ECMA-262 regexes and Python's `re` read alike."""

    regex: str


@dataclass(frozen=True)
class Description:
    """Text shown with the field in the schema (`GET /v1/plugins`, the dashboard form)."""

    text: str


@dataclass(frozen=True)
class Format:
    """The JSON Schema `format` of a `str` field. The host gives `kiln-file` a meaning: the
    field holds the id of an uploaded file (`POST /v1/files`), the host refuses a payload
    naming a file that does not exist or belongs to another tenant, and only such files
    can be read through `kiln_plugin.files`. Use `FileId` for that case. Other formats
    are shown in the schema and not checked by the SDK."""

    name: str


Constraint = Union[Range, Length, Pattern, Description, Format]

#: A payload field holding the id of an uploaded file the job may read: `Annotated[str,
#: Format("kiln-file")]`. Add `Description(...)` etc. with another `Annotated` around it.
FileId = Annotated[str, Format("kiln-file")]

_CONSTRAINTS = (Range, Length, Pattern, Description, Format)

_SCALARS: dict[type, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}


def payload_schema(cls: type, title: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of payload dataclass `cls`, titled `title`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"the payload must be a dataclass, got {cls!r}")
    return {"$schema": JSON_SCHEMA_DIALECT, "title": title, **schema_of(cls)}


def parse_payload(cls: type, text: str) -> Any:
    """Payload JSON text -> an instance of `cls`, or `InvalidInput` naming the bad field."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"payload is not JSON: {error}") from None
    return parse(cls, value, "payload")


def schema_of(tp: Any) -> dict[str, Any]:
    """The JSON Schema of type `tp`; `TypeError` for a type the SDK cannot express."""
    tp, constraints = _unwrap(tp)
    inner = _optional_inner(tp)
    if inner is not None:
        return _nullable(schema_of(_annotate(inner, constraints)))
    schema = _base_schema(tp)
    for constraint in constraints:
        _apply(constraint, schema, tp)
    return schema


def parse(tp: Any, value: Any, path: str) -> Any:
    """Checks `value` (decoded JSON) against `tp` and converts it (dicts to dataclasses).
    Raises `InvalidInput` with `path` (e.g. `payload.items[2].name`) on a mismatch."""
    tp, constraints = _unwrap(tp)
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else parse(_annotate(inner, constraints), value, path)
    value = _parse_base(tp, value, path)
    for constraint in constraints:
        _check(constraint, value, path)
    return value


def _unwrap(tp: Any) -> tuple[Any, list[Constraint]]:
    """Splits `Annotated[T, c1, c2]` into `T` and the SDK's constraints (others ignored)."""
    constraints: list[Constraint] = []
    while typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        ours = [c for c in extras if isinstance(c, _CONSTRAINTS)]
        constraints = ours + constraints
        tp = base
    return tp, constraints


def _annotate(tp: Any, constraints: list[Constraint]) -> Any:
    """`Annotated[tp, *constraints]`: moves the constraints of `Annotated[Optional[T], ...]`
    onto `T`, where they apply."""
    return Annotated[(tp, *constraints)] if constraints else tp


def _optional_inner(tp: Any) -> Any:
    """`T` when `tp` is `Optional[T]` / `T | None`, else None."""
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) != 1:
        raise TypeError(f"unsupported union {tp!r}: only Optional[T] is supported")
    return args[0]


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str) and "enum" not in schema:
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


@functools.lru_cache(maxsize=None)
def _fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    """The init fields of dataclass `cls` with their resolved types (Annotated kept)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls) if f.init)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _docstring(cls: type) -> Optional[str]:
    # A dataclass without a docstring gets a generated one, "Name(field: type, ...)".
    doc = cls.__doc__
    if not doc or doc.startswith(cls.__name__ + "("):
        return None
    return " ".join(doc.split())


def _base_schema(tp: Any) -> dict[str, Any]:
    if tp is Any:
        return {}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        schema: dict[str, Any] = {"enum": list(args)}
        kinds = {_SCALARS.get(type(a)) for a in args}
        if len(kinds) == 1 and None not in kinds:
            schema = {"type": kinds.pop(), **schema}
        return schema
    if origin is list and len(args) == 1:
        return {"type": "array", "items": schema_of(args[0])}
    if origin is dict and len(args) == 2 and args[0] is str:
        return {"type": "object", "additionalProperties": schema_of(args[1])}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _object_schema(tp)
    raise TypeError(
        f"unsupported payload type {tp!r}: use str, int, float, bool, list[T], "
        "dict[str, T], Optional[T], Literal[...], Any or a dataclass"
    )


def _object_schema(cls: type) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    doc = _docstring(cls)
    if doc:
        schema["description"] = doc
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field, tp in _fields(cls):
        prop = schema_of(tp)
        default = _default(field)
        if default is dataclasses.MISSING:
            required.append(field.name)
        else:
            try:
                prop["default"] = json.loads(to_json(default))
            except (TypeError, ValueError):
                pass  # a default JSON cannot show is still a default; it is just not listed
        properties[field.name] = prop
    if required:
        schema["required"] = required
    schema["properties"] = properties
    schema["additionalProperties"] = False
    return schema


def _apply(constraint: Constraint, schema: dict[str, Any], tp: Any) -> None:
    kind = schema.get("type")
    if isinstance(constraint, Description):
        # Description first: it reads best above the type in a printed schema.
        updated = {"description": constraint.text, **schema}
        schema.clear()
        schema.update(updated)
    elif isinstance(constraint, Range) and kind in ("integer", "number"):
        if constraint.min is not None:
            schema["minimum"] = constraint.min
        if constraint.max is not None:
            schema["maximum"] = constraint.max
    elif isinstance(constraint, Length) and kind in ("string", "array"):
        low, high = ("minLength", "maxLength") if kind == "string" else ("minItems", "maxItems")
        if constraint.min is not None:
            schema[low] = constraint.min
        if constraint.max is not None:
            schema[high] = constraint.max
    elif isinstance(constraint, Pattern) and kind == "string":
        re.compile(constraint.regex)  # a bad pattern fails at declaration, not per job
        schema["pattern"] = constraint.regex
    elif isinstance(constraint, Format) and kind == "string":
        schema["format"] = constraint.name
    else:
        raise TypeError(f"{constraint!r} does not apply to {tp!r}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _parse_base(tp: Any, value: Any, path: str) -> Any:
    def wrong(expected: str) -> InvalidInput:
        return InvalidInput(f"{path}: expected {expected}, got {_type_name(value)}")

    if tp is Any:
        return value
    if tp is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong("a boolean")
        return value
    if tp is int:
        # JSON Schema counts 3.0 as an integer; bool is an int in Python but not in JSON.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong("an integer")
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise wrong("a number")
        return float(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if not any(type(a) is type(value) and a == value for a in args):
            choices = ", ".join(json.dumps(a) for a in args)
            raise InvalidInput(f"{path}: must be one of {choices}, got {json.dumps(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise wrong("an array")
        return [parse(args[0], item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong("an object")
        return {k: parse(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong("an object")
        return _parse_object(tp, value, path)
    raise TypeError(f"unsupported payload type {tp!r}")


def _parse_object(cls: type, value: dict[str, Any], path: str) -> Any:
    fields = _fields(cls)
    names = [f.name for f, _ in fields]
    unknown = [k for k in value if k not in names]
    if unknown:
        raise InvalidInput(
            f"{path}: unknown field {unknown[0]!r} (expected one of: {', '.join(names)})"
        )
    kwargs = {}
    for field, tp in fields:
        if field.name in value:
            kwargs[field.name] = parse(tp, value[field.name], f"{path}.{field.name}")
        elif _default(field) is dataclasses.MISSING:
            raise InvalidInput(f"{path}: missing required field {field.name!r}")
    return cls(**kwargs)


def _check(constraint: Constraint, value: Any, path: str) -> None:
    if isinstance(constraint, Range):
        if constraint.min is not None and value < constraint.min:
            raise InvalidInput(f"{path}: must be at least {constraint.min}, got {value}")
        if constraint.max is not None and value > constraint.max:
            raise InvalidInput(f"{path}: must be at most {constraint.max}, got {value}")
    elif isinstance(constraint, Length):
        unit, size = ("characters" if isinstance(value, str) else "items"), len(value)
        if constraint.min is not None and size < constraint.min:
            raise InvalidInput(f"{path}: must have at least {constraint.min} {unit}, got {size}")
        if constraint.max is not None and size > constraint.max:
            raise InvalidInput(f"{path}: must have at most {constraint.max} {unit}, got {size}")
    elif isinstance(constraint, Pattern):
        if re.search(constraint.regex, value) is None:
            raise InvalidInput(f"{path}: must match the pattern {constraint.regex!r}")
