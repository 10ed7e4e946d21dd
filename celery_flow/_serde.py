"""JSON in, JSON out: the only serialisation celery_flow uses (never pickle).

Values are dumped with pydantic models in JSON mode; anything else that
``json`` cannot encode is an error naming where the value came from.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from .errors import InputValidationError, OutputSerializationError, PayloadTooLargeError


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(type(value).__qualname__)


def dumps(value: Any, *, what: str, max_bytes: int, is_input: bool = False) -> str:
    """Encode ``value`` as compact JSON or raise a FlowError naming ``what``.

    Args:
        value: the value to encode.
        what: where it comes from, e.g. ``"output of step 'charge' in run 1f2e…"``.
        max_bytes: the largest encoded size allowed.
        is_input: raise InputValidationError instead of OutputSerializationError.
    """
    try:
        text = json.dumps(value, default=_default, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        cls = InputValidationError if is_input else OutputSerializationError
        raise cls(
            f"{what} is not JSON-serialisable ({exc}). celery_flow stores only JSON: return "
            "dicts, lists, strings, numbers, booleans, None or pydantic models, and convert "
            "other types (datetime -> isoformat(), Decimal -> str, objects -> dicts) yourself."
        ) from None
    size = len(text.encode())
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"{what} is {size} bytes of JSON, over max_payload_bytes={max_bytes}. Store large "
            "data elsewhere (object storage, a database) and pass a reference, or raise "
            "Flow(max_payload_bytes=...)."
        )
    return text


def loads(text: str | None) -> Any:
    return None if text is None or text == "" else json.loads(text)
