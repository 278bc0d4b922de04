"""The wire format between a parent and its child: length-prefixed JSON frames over pipes.

Each frame is a 4-byte big-endian length, then that many bytes of UTF-8
JSON (an object with a ``"t"`` field naming its kind). JSON, not pickle:
nothing but JSON values crosses the boundary, so a child never runs code a
frame smuggles in, and a value that is not JSON is refused where it is made
with the error durable runs give.
"""

from __future__ import annotations

import json
from typing import Any

_HEADER = 4
#: A frame larger than this is refused: a corrupt length would otherwise allocate gigabytes.
MAX_FRAME = 1 << 30

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True)
_encode = _encoder.encode
_decode = json.JSONDecoder().decode


def encode(frame: dict[str, Any]) -> bytes:
    """``frame`` as bytes on the wire (raises ``TypeError``/``ValueError`` for what is not JSON)."""
    body = _encode(frame).encode("utf-8", "surrogatepass")
    return len(body).to_bytes(_HEADER, "big") + body


class FrameError(Exception):
    """The byte stream is not a sequence of frames (the other side is not an asyncflow peer)."""


class FrameBuffer:
    """Bytes received so far, cut into frames as they complete."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add ``data``; return the frames it completed, in order."""
        buffer = self._buffer
        buffer += data
        frames: list[dict[str, Any]] = []
        start = 0
        end = len(buffer)
        while end - start >= _HEADER:
            size = int.from_bytes(buffer[start : start + _HEADER], "big")
            if size > MAX_FRAME:
                raise FrameError(f"a frame of {size} bytes is larger than the limit of {MAX_FRAME}")
            if end - start - _HEADER < size:
                break
            body = bytes(buffer[start + _HEADER : start + _HEADER + size])
            start += _HEADER + size
            try:
                frame = _decode(body.decode("utf-8", "surrogatepass"))
            except ValueError as exc:
                raise FrameError(f"a frame is not JSON: {exc}") from None
            if not isinstance(frame, dict):
                raise FrameError(f"a frame is not a JSON object: {frame!r}")
            frames.append(frame)
        if start:
            del buffer[:start]
        return frames

    @property
    def empty(self) -> bool:
        """Whether no partial frame is waiting for more bytes."""
        return not self._buffer
