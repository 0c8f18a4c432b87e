"""Every JSON the edge reads from a client goes through here: `/ws` and WebRTC data channel
messages, the xiaozhi hello and device messages, and REST (and `POST /webrtc/offer`)
request bodies.

One place bounds what a client can make the parser do: a size cap, and a nesting cap
checked *before* decoding, because msgspec and the json module both recurse per level and
raise RecursionError (not a decode error) on a few thousand brackets — which used to end
connections with 1006 and requests with 500. Decoding into a Struct is strict (no float
for an int, no string for a number), so what passes is exactly what the actors decode.

A refusal is a `JsonInputError` with a one-line reason; each protocol turns it into its own
error (`ApiError` for the REST API and the real-time refusals, an `error` message within a
session).
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

import msgspec
import msgspec.inspect
import numpy as np

from edge.errors import ApiError

T = TypeVar("T")
MAX_DEPTH = 32  # arrays and objects inside each other; real messages use 4 or 5
Problem = Literal["too_large", "too_deep", "malformed", "invalid", "unknown_type"]
S = TypeVar("S", bound=msgspec.Struct)
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN, _CLOSE = (ord("["), ord("{")), (ord("]"), ord("}"))
# The REST API's codes (and statuses) for each problem.
REST_CODES: dict[Problem, tuple[int, str]] = {
    "too_large": (413, "body_too_large"),
    "too_deep": (400, "json_too_deep"),
    "malformed": (400, "malformed_json"),
    "invalid": (422, "validation_failed"),
    "unknown_type": (422, "validation_failed"),
}
# Within a real-time session a refused message gets an `error` message (the session goes
# on); the status only matters where a refusal closes the connection (4000 + status).
MESSAGE_CODES: dict[Problem, tuple[int, str]] = {
    "too_large": (413, "frame_too_large"),
    "too_deep": (400, "json_too_deep"),
    "malformed": (400, "bad_message"),
    "invalid": (422, "bad_message"),
    "unknown_type": (400, "unknown_type"),
}


class JsonInputError(ValueError):
    """Client JSON the edge refuses: what is wrong (`problem`), why in one line
    (`reason`), and where (`at`, a JSON path like `$.audio_params.sample_rate`)."""

    def __init__(self, problem: Problem, reason: str, at: str | None = None) -> None:
        super().__init__(reason)
        self.problem = problem
        self.reason = reason
        self.at = at

    @property
    def details(self) -> dict[str, Any]:
        return {"at": self.at} if self.at is not None else {}

    def api_error(self, codes: dict[Problem, tuple[int, str]] | None = None) -> ApiError:
        status, code = (codes or REST_CODES)[self.problem]
        return ApiError(status, code, self.reason, self.details)


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest deeper than `limit` in `data` (brackets inside
    strings do not count). Vectorised, no per-character Python: ~10 ms for a mebibyte
    however it is crafted, so refusing a body costs little more than reading it. Malformed
    JSON may be called deep; anything else is left for the decoder to judge."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # too few brackets to nest that deep: the common case, nothing to copy
    chars = np.frombuffer(data, np.uint8)
    quotes = chars == _QUOTE
    if quotes.any():
        backslashes = chars == _BACKSLASH
        if backslashes.any():
            # A quote after an odd run of backslashes is escaped. `plain[i]`: the last index
            # up to i that is not a backslash, so `i - plain[i]` backslashes end at i.
            index = np.arange(chars.size, dtype=np.int64)
            plain = np.maximum.accumulate(np.where(backslashes, -1, index))
            run = np.zeros(chars.size, np.int64)
            run[1:] = index[:-1] - plain[:-1]
            quotes &= run % 2 == 0
        # Odd count of quotes so far: inside a string (its closing quote already outside).
        inside = np.cumsum(quotes, dtype=np.int64) % 2 == 1
    steps = np.zeros(chars.size, np.int8)
    steps[(chars == _OPEN[0]) | (chars == _OPEN[1])] = 1
    steps[(chars == _CLOSE[0]) | (chars == _CLOSE[1])] = -1
    if quotes.any():
        steps[inside] = 0
    return bool(np.cumsum(steps, dtype=np.int64).max() > limit)


def check(data: str | bytes, *, max_bytes: int | None = None, max_depth: int = MAX_DEPTH) -> bytes:
    """The input as bytes, once it is within the size and nesting limits."""
    raw = data.encode() if isinstance(data, str) else data
    if max_bytes is not None and len(raw) > max_bytes:
        raise JsonInputError("too_large", f"the JSON is larger than {max_bytes} bytes")
    if too_deep(raw, max_depth):
        raise JsonInputError("too_deep", f"the JSON nests deeper than {max_depth} levels")
    return raw


def parse(data: str | bytes, kind: type[T] = Any,  # type: ignore[assignment]  # Any: plain JSON values
          *, max_bytes: int | None = None, max_depth: int = MAX_DEPTH) -> T:
    """Decode `data` strictly into `kind` (default: plain JSON values), within the limits."""
    raw = check(data, max_bytes=max_bytes, max_depth=max_depth)
    try:
        return msgspec.json.decode(raw, type=kind, strict=True)
    except msgspec.ValidationError as exc:
        raise invalid(exc, kind) from None
    except msgspec.DecodeError as exc:
        raise JsonInputError("malformed", f"not valid JSON: {exc}") from None
    except RecursionError:  # only if the depth check and the decoder ever disagree
        raise JsonInputError("too_deep", f"the JSON nests deeper than {max_depth} levels") from None


def parse_message(data: str | bytes, kinds: dict[str, type[S]], *,
                  max_bytes: int | None = None) -> tuple[str, S]:
    """A real-time client message: a JSON object whose `type` names one of `kinds`, decoded
    strictly into that Struct (the Struct ignores `type` and any field it does not name).
    The type is read first and the message then decoded straight into its Struct, so fields
    it does not name are skipped unbuilt and a wrong one fails where it starts: a large
    message (a photo) never becomes a tree of Python objects many times its size."""
    raw = check(data, max_bytes=max_bytes)
    kind = _kind(raw)
    if kind is None:
        raise JsonInputError("invalid", "a message is a JSON object with a string 'type'", "$.type")
    cls = kinds.get(kind)
    if cls is None:
        raise JsonInputError("unknown_type", f"unknown message type {kind[:64]!r}", "$.type")
    try:
        return kind, msgspec.json.decode(raw, type=cls, strict=True)
    except msgspec.ValidationError as exc:
        raise invalid(exc, cls) from None
    except msgspec.DecodeError as exc:  # only if the two decodes ever disagree
        raise JsonInputError("malformed", f"not valid JSON: {exc}") from None


def message_type(data: str | bytes) -> str | None:
    """A message's `type` without building the rest of it: which limit a large message is
    under, before it is parsed. None if the JSON is refused or has no string `type`."""
    try:
        return _kind(check(data))
    except JsonInputError:
        return None


class _Typed(msgspec.Struct):
    type: str | None = None


def _kind(raw: bytes) -> str | None:
    """The string `type` of a JSON object; None for anything else."""
    try:
        return msgspec.json.decode(raw, type=_Typed, strict=True).type
    except msgspec.ValidationError:
        return None
    except msgspec.DecodeError as exc:
        raise JsonInputError("malformed", f"not valid JSON: {exc}") from None
    except RecursionError:  # only if the depth check and the decoder ever disagree
        raise JsonInputError("too_deep", f"the JSON nests deeper than {MAX_DEPTH} levels") from None


def convert(value: Any, kind: type[T]) -> T:
    """Already parsed JSON (from `parse`) as `kind`, strictly."""
    try:
        return msgspec.convert(value, kind, strict=True)
    except msgspec.ValidationError as exc:
        raise invalid(exc, kind) from None


def invalid(exc: msgspec.ValidationError, kind: Any = None) -> JsonInputError:
    """msgspec's message ("Expected `int`, got `float` - at `$.audio_params.sample_rate`"),
    with its path also given apart as `at`."""
    text = explained(exc, kind)
    _, found, path = text.partition(" - at `")
    return JsonInputError("invalid", text, path.rstrip("`") if found else "$")


def explained(exc: msgspec.ValidationError, kind: Any = None) -> str:
    """msgspec's message, and for a value none of a Literal's (which msgspec only calls
    invalid) the values `kind` allows there: "Invalid enum value 'x' (one of: a, b) - at …"."""
    text = str(exc)
    what, found, path = text.partition(" - at `")
    if kind is None or not what.startswith("Invalid enum value"):
        return text
    allowed = choices(kind, path.rstrip("`") if found else "$")
    return text if not allowed else f"{what} (one of: {', '.join(map(str, allowed))}){found}{path}"


def choices(kind: Any, path: str) -> tuple[Any, ...] | None:
    """The values the Literal at `path` (`$.turn.detector`, `$.items[0]`) of `kind` allows;
    None where there is none."""
    info: Any = msgspec.inspect.type_info(kind)
    for name in re.findall(r"\.(\w+)|\[\d+\]", path.removeprefix("$")):
        info = _solid(info)
        if name and isinstance(info, msgspec.inspect.StructType):
            info = next((f.type for f in info.fields if f.encode_name == name), None)
        elif not name and isinstance(info, msgspec.inspect.ListType):
            info = info.item_type
        else:
            return None
    info = _solid(info)
    return tuple(sorted(info.values, key=str)) if isinstance(info, msgspec.inspect.LiteralType) else None


def _solid(info: Any) -> Any:
    """A union's one type besides None (`X | None`); anything else as it is."""
    if isinstance(info, msgspec.inspect.UnionType):
        rest = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        return rest[0] if len(rest) == 1 else info
    return info
