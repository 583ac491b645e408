"""Request bodies: read within a limit (sized or chunked), parse JSON within bounds."""

from __future__ import annotations

import json
import re

from flask import request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from dacc.errors import BadRequest, DaccError, PayloadTooLarge

_CHUNK = 64 * 1024
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
CONTAINERS_PER_ITEM = 8
"""A measure is one object and up to three group objects: a bulk body with more `{`
and `[` than this per allowed item is refused before parsing (its parse could cost
far more memory than a legitimate body)."""
SEPARATORS_PER_ITEM = 40
"""Likewise for `,` (a measure has about ten fields)."""


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"body: larger than the limit of {limit} bytes ({_shown_size(limit)})")


def read_body(limit: int) -> bytes:
    """The raw body, at most `limit` bytes: 413 (saying the limit) past it, as soon as
    a chunked body passes it; 400 for a malformed chunked encoding or a cut body."""
    request.max_content_length = limit
    try:
        if request.content_length is not None or "wsgi.input_terminated" not in request.environ:
            # Werkzeug refuses a Content-Length over the limit before reading.
            return request.get_data(cache=False)
        return _read_unsized(request.environ["wsgi.input"], limit)
    except RequestEntityTooLarge:
        raise too_large(limit) from None
    except (HTTPException, DaccError):
        raise
    except Exception:  # the server's chunk parser, a reset connection, a read timeout
        raise BadRequest("body: malformed chunked encoding or incomplete body") from None


def _read_unsized(stream, limit: int) -> bytes:
    """A chunked body, read until its end, refused as soon as it passes `limit`."""
    parts, size = [], 0
    while True:
        part = stream.read(_CHUNK)
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > limit:
            raise too_large(limit)
        parts.append(part)


def parse_json(raw: bytes):
    """The JSON value of a body; 400 naming the fault."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body: not valid JSON ({_fault(exc)})") from None


def parse_json_array(raw: bytes, *, max_items: int, what: str = "measures"):
    """A JSON array parsed item by item: refused (400) at item `max_items + 1` as soon
    as it is read, and before parsing when the body has far more structure than
    `max_items` legitimate items could hold. Anything but an array is returned as
    parsed (the caller says what it expected)."""
    if (
        raw.count(b"{") + raw.count(b"[") > CONTAINERS_PER_ITEM * max_items + 1
        or raw.count(b",") > SEPARATORS_PER_ITEM * max_items
    ):
        raise BadRequest(
            f"body: more structure than {max_items} {what} can hold; at most {max_items} per request"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body: not valid JSON (not UTF-8)") from None
    start = _WHITESPACE.match(text).end()
    if not text.startswith("[", start):
        return parse_json(raw)
    try:
        return _array_items(text, start + 1, max_items, what)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body: not valid JSON ({_fault(exc)})") from None


def _array_items(text: str, at: int, max_items: int, what: str) -> list:
    skip = _WHITESPACE.match
    scan = _DECODER.raw_decode
    items: list = []
    at = skip(text, at).end()
    if text.startswith("]", at):
        return _end(text, at + 1, items)
    while True:
        item, at = scan(text, at)
        items.append(item)
        if len(items) > max_items:
            # Said as soon as item max_items + 1 is read: the rest is never parsed.
            raise BadRequest(f"body: at most {max_items} {what} per request, got {len(items)}")
        at = skip(text, at).end()
        char = text[at : at + 1]
        if char == ",":
            at = skip(text, at + 1).end()
        elif char == "]":
            return _end(text, at + 1, items)
        else:
            raise ValueError(f"expected ',' or ']' at char {at}")


def _end(text: str, at: int, items: list) -> list:
    if _WHITESPACE.match(text, at).end() != len(text):
        raise ValueError(f"extra data after the array at char {at}")
    return items


def _fault(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def _shown_size(limit: int) -> str:
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"
