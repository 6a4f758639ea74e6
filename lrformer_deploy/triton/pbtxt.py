"""Render a model configuration (nested dicts/lists) as protobuf text format, the syntax of config.pbtxt.

Strings are quoted, `Enum` values (TYPE_FP32, KIND_GPU) are not, a list of dicts becomes `field [ {...}, ... ]`,
a list of scalars `field: [ ... ]`, and a `Map` becomes repeated `field { key: ... value: ... }` entries.
"""
from __future__ import annotations

import json
from typing import Any


class Enum(str):
    """A protobuf enum value: written without quotes."""


class Map(dict):
    """A protobuf map field."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # protobuf text accepts C-style escapes, a superset of JSON's
    raise TypeError(f"cannot write {value!r} in a model config")


def _message(fields: dict, indent: int) -> list[str]:
    pad = "  " * indent
    lines = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, Map):
            for k, v in value.items():
                entry = {"key": k, "value": v}
                lines.append(f"{pad}{key} {{")
                lines += _message(entry, indent + 1)
                lines.append(f"{pad}}}")
        elif isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            lines += _message(value, indent + 1)
            lines.append(f"{pad}}}")
        elif isinstance(value, (list, tuple)):
            if value and all(isinstance(v, dict) for v in value):
                lines.append(f"{pad}{key} [")
                for i, item in enumerate(value):
                    lines.append(f"{pad}  {{")
                    lines += _message(item, indent + 2)
                    lines.append(f"{pad}  }}" + ("," if i < len(value) - 1 else ""))
                lines.append(f"{pad}]")
            else:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def render(config: dict) -> str:
    return "\n".join(_message(config, 0)) + "\n"
