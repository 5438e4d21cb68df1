"""The public wire protocol for sentiment events (see docs/protocol.md).

Events are published by the fusion stage on a ZeroMQ PUB socket, topic "events":

    frame 0   b"events"
    frame 1   UTF-8 JSON header {"v": 1, "kind": "event" | "eos", "stream": "events", "seq": ...,
              "t_capture_ns": ..., "t_media_s": ..., "arrays": [], "meta": EVENT, "trace": {...}}

EVENT follows the JSON Schema engine/schema/event-1.json (`sentistream.event/1`).

This module validates against that schema without any third-party dependency: it
interprets the subset of JSON Schema (2020-12) the schema file uses (type, const,
enum, required, properties, additionalProperties, items, minimum, maximum,
minLength, local $ref). Keep the schema within that subset; tests cross-check
the result with the `jsonschema` package.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

EVENT_SCHEMA = "sentistream.event/1"
EVENT_SCHEMA_FILE = "schema/event-1.json"
EVENTS_TOPIC = b"events"
WIRE_VERSION = 1  # version of the header frame (engine/messages.py)
MAX_HEADER_BYTES = 1 << 20

SUPPORTED_KEYWORDS = frozenset(
    {
        "$schema", "$id", "$defs", "$ref", "title", "description",
        "type", "const", "enum", "required", "properties", "additionalProperties",
        "items", "minimum", "maximum", "minLength",
    }
)  # fmt: skip


class ProtocolError(ValueError):
    """A message or event that does not follow the protocol."""


def event_schema_path() -> Path:
    return Path(str(resources.files("sentistream.engine").joinpath(EVENT_SCHEMA_FILE)))


@lru_cache(maxsize=1)
def load_event_schema() -> dict[str, Any]:
    return json.loads(event_schema_path().read_text(encoding="utf-8"))


# ---- a small JSON Schema interpreter -------------------------------------------


def _type_ok(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if name == "number":
        return True
    if name == "integer":
        return isinstance(value, int) or value.is_integer()
    raise ValueError(f"unsupported JSON Schema type {name!r}")


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref is supported, not {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _validate(value: Any, schema: Any, root: dict[str, Any], path: str, strict: bool, errors: list[str]) -> None:
    if schema is True or schema == {}:
        return
    where = path or "event"
    if schema is False:
        errors.append(f"{where}: not allowed")
        return
    unknown = set(schema) - SUPPORTED_KEYWORDS
    if unknown:
        raise ValueError(f"{where}: schema keyword(s) {sorted(unknown)} not supported by this validator")
    if "$ref" in schema:
        _validate(value, _resolve(root, schema["$ref"]), root, path, strict, errors)
        schema = {k: v for k, v in schema.items() if k != "$ref"}
        if not set(schema) - {"title", "description"}:
            return
    if "const" in schema and not (value == schema["const"] and type(value) is type(schema["const"])):
        errors.append(f"{where}: must be {schema['const']!r}, not {value!r}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: must be one of {schema['enum']}, not {value!r}")
        return
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            errors.append(f"{where}: must be of type {'/'.join(types)}, not {type(value).__name__} {value!r:.60}")
            return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, str) and "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{where}: shorter than {schema['minLength']} character(s)")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _validate(item, schema["items"], root, f"{path}[{i}]", strict, errors)
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing required field {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if key in props:
                _validate(item, props[key], root, sub, strict, errors)
            elif extra is True and strict:
                errors.append(f"{sub}: field not declared in the schema")
            else:
                _validate(item, extra, root, sub, strict, errors)


def validate_event(event: Any, *, strict: bool = False) -> list[str]:
    """Problems with `event` against sentistream.event/1 ([] when it is valid).

    strict=False is the consumer's view: unknown fields are allowed (they may be
    added within version 1). strict=True is the producer's contract: every field
    the engine emits must be declared in the schema.
    """
    errors: list[str] = []
    schema = load_event_schema()
    _validate(event, schema, schema, "", strict, errors)
    return errors


def check_event(event: Any, *, strict: bool = False) -> dict[str, Any]:
    """Return `event` if it is valid, else raise ProtocolError naming every problem."""
    errors = validate_event(event, strict=strict)
    if errors:
        raise ProtocolError("; ".join(errors[:10]) + (f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""))
    return event


# ---- frames ------------------------------------------------------------------


def parse_event_frames(frames: list[Any]) -> tuple[str, dict[str, Any]]:
    """Multipart frames from the events topic -> (kind, header).

    kind is "event" (header["meta"] is the event, not yet validated) or "eos"
    (the session ended). Raises ProtocolError for anything else.
    """
    if not isinstance(frames, (list, tuple)) or len(frames) < 2:
        raise ProtocolError("a message needs a topic frame and a header frame")
    topic = bytes(getattr(frames[0], "bytes", frames[0]))
    if topic != EVENTS_TOPIC:
        raise ProtocolError(f"unexpected topic {topic[:40]!r}")
    raw = bytes(getattr(frames[1], "bytes", frames[1]))
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes is too large")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    if header.get("v") != WIRE_VERSION:
        raise ProtocolError(f"unsupported wire version {header.get('v')!r}")
    kind = header.get("kind")
    if kind not in ("event", "eos"):
        raise ProtocolError(f"unexpected message kind {kind!r} on the events topic")
    if kind == "event" and not isinstance(header.get("meta"), dict):
        raise ProtocolError("event message without a meta object")
    return kind, header
