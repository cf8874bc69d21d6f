"""JSON-schema validation of config.yaml and the suite files with short error messages.

:func:`validate` fills in the schema's defaults as ``snakemake.utils.validate`` does (a Draft 2020-12 validator
whose ``properties`` keyword first sets each missing property that has a ``default``), but a failure raises a
:class:`SchemaError` of one or two lines (what, key path, offending value, what is allowed) instead of
jsonschema's message with the whole schema."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

VALUE_CHARS = 60  # longest rendering of an offending value in a message


class SchemaError(ValueError):
    """Data that does not match its JSON schema; the message names the key, the value and what is allowed."""


def _set_defaults_then_check(validator: Any, properties: Mapping[str, Any], instance: Any,
                             schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if isinstance(instance, dict):
        for name, subschema in properties.items():
            if "default" in subschema:
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
    yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)


DefaultFillingValidator = validators.extend(Draft202012Validator, {"properties": _set_defaults_then_check})


def load_schema(schema_path: str | Path) -> dict[str, Any]:
    """Read a JSON schema written in YAML (or JSON)."""
    with Path(schema_path).open() as handle:
        return yaml.safe_load(handle)


def validate(data: dict[str, Any], schema_path: str | Path, what: str) -> dict[str, Any]:
    """Fill ``data``'s missing properties with the schema's defaults (in place) and check it against the schema
    at ``schema_path``; ``what`` names the data in the error (e.g. ``config.yaml`` or a suite file's path).

    Raises :class:`SchemaError` with a short message on the most relevant violation."""
    schema = load_schema(schema_path)
    error = best_match(DefaultFillingValidator(schema).iter_errors(data))
    if error is None:
        return data
    if error.parent is not None and error.parent.validator in ("oneOf", "anyOf"):
        error = error.parent  # name the alternatives, not the one branch best_match descended into
    raise SchemaError(f"{what}: {describe_error(error)}")


def key_path(error: ValidationError) -> str:
    """The dotted key path of the offending value (``methods.dime.batch_size``; list items as ``[i]``)."""
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def short_value(value: Any) -> str:
    """``repr`` of a value, cut to :data:`VALUE_CHARS` characters."""
    text = repr(value)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 3] + "..."


def _allowed_keys(schema: Mapping[str, Any]) -> str:
    return ", ".join(schema.get("properties", {})) or "none"


def _unknown_keys(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    patterns = list(schema.get("patternProperties", {}))
    return [str(key) for key in instance if key not in schema.get("properties", {})
            and not any(re.search(pattern, str(key)) for pattern in patterns)]


def _type_names(types: str | list[str]) -> str:
    return " or ".join(types) if isinstance(types, list) else types


def _alternatives(schemas: list[Mapping[str, Any]]) -> str:
    """One short phrase per subschema of a oneOf / anyOf (its type, enum or required keys)."""
    phrases = []
    for sub in schemas:
        if "required" in sub:
            phrases.append("a mapping with " + ", ".join(sub["required"]))
        elif "enum" in sub:
            phrases.append("one of " + ", ".join(map(str, sub["enum"])))
        elif "type" in sub:
            phrases.append(_type_names(sub["type"]))
        else:
            phrases.append(short_value(dict(sub)))
    return "; ".join(phrases)


def describe_error(error: ValidationError) -> str:
    """``KEY: VALUE is not allowed; allowed: ...`` for one jsonschema error, without the schema dump."""
    where = key_path(error) or "top level"
    keyword, expected, value = error.validator, error.validator_value, error.instance
    if keyword == "additionalProperties" and expected is False:
        unknown = ", ".join(_unknown_keys(value, error.schema))
        return f"{where}: unknown key {unknown}; allowed: {_allowed_keys(error.schema)}"
    if keyword == "required":
        missing = ", ".join(key for key in expected if key not in value)
        return f"{where}: missing key {missing}"
    shown = "the entry" if isinstance(value, dict) else short_value(value)
    problems = {
        "enum": lambda: f"{shown} is not allowed; allowed: {', '.join(map(str, expected))}",
        "const": lambda: f"{shown} is not allowed; allowed: {expected!r}",
        "type": lambda: f"{shown} is not allowed; allowed: a value of type {_type_names(expected)}",
        "pattern": lambda: f"{shown} is not allowed; allowed: strings matching {expected}",
        "minimum": lambda: f"{shown} is not allowed; allowed: at least {expected}",
        "maximum": lambda: f"{shown} is not allowed; allowed: at most {expected}",
        "exclusiveMinimum": lambda: f"{shown} is not allowed; allowed: more than {expected}",
        "exclusiveMaximum": lambda: f"{shown} is not allowed; allowed: less than {expected}",
        "minItems": lambda: f"{shown} has {len(value)} items; allowed: at least {expected}",
        "maxItems": lambda: f"{shown} has {len(value)} items; allowed: at most {expected}",
        "oneOf": lambda: f"{'none' if error.context else 'more than one'} of the allowed forms matches "
                         f"{shown}: {_alternatives(expected)}",
        "anyOf": lambda: f"none of the allowed forms matches {shown}: {_alternatives(expected)}",
    }
    if keyword in problems:
        return f"{where}: {problems[keyword]()}"
    message = error.message if len(error.message) <= 2 * VALUE_CHARS else error.message[:2 * VALUE_CHARS] + "..."
    return f"{where}: {message}"
