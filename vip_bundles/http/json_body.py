"""A request body as a JSON object, or `InvalidRequest` naming `body` (never a 500)."""

from __future__ import annotations

import json
from typing import Any

from process_manager.messages import InvalidRequest
from vip_bundles.http.errors import error

MAX_DEPTH = 32  # a request nests 2 deep; anything near this is not one


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or `InvalidRequest` naming `body`."""
    try:
        data = json.loads(raw)
    except RecursionError:  # the parser's own stack: nested far beyond MAX_DEPTH
        raise InvalidRequest("body: nests too deep", [error("body", "nests too deep")]) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            "body: not valid JSON", [error("body", f"invalid JSON: {exc}")]
        ) from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise InvalidRequest(
            "body: not a JSON object", [error("body", f"must be a JSON object, got {kind}")]
        )
    if _depth(data) > MAX_DEPTH:
        raise InvalidRequest(
            "body: nests too deep", [error("body", f"nests more than {MAX_DEPTH} levels deep")]
        )
    return data


def _depth(value: Any) -> int:
    """How deep arrays and objects nest (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest
