"""Reading a stage's EVIDENCE object (standard library only): every path of a nested value, and its leaves."""

from __future__ import annotations

from typing import Any


def nodes(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every path of `value` with what it holds, inner lists and dicts included (the root's path is "")."""
    out: dict[str, Any] = {prefix[:-1]: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        out.update(nodes(v, f"{prefix}{k}."))
    return out


def flatten(value: Any) -> dict[str, Any]:
    """{'a': {'b': [1, {'c': 2}]}} -> {'a.b.0': 1, 'a.b.1.c': 2}; leaves only (an empty list or dict is one)."""
    return {k: v for k, v in nodes(value).items() if not (isinstance(v, (list, dict)) and v)}
