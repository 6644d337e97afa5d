"""JSON, never pickle, for everything the job queue keeps in Redis.

Redis contents are data, not code, so jobs, their arguments and their results are
JSON. Arguments are checked when a job is enqueued: a datetime, a set or bytes fail
in the code that tried to send them, with the offending path in the message, instead
of in the worker later. An exception a job raised is stored as its type and message
and read back as `JobError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

_ERROR_KEY = "__job_error__"
_MAX_ERROR_MESSAGE = 500


class JobPayloadError(TypeError):
    """A job's arguments cannot be sent: not JSON, or not what the function accepts."""


class JobError(Exception):
    """A failure read back from the queue: the original exception's type and message."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}" if message else type_name)


def _encode_exception(value: object) -> dict[str, Any]:
    if isinstance(value, JobError):
        return {_ERROR_KEY: {"type": value.type_name, "message": value.message}}
    if isinstance(value, BaseException):
        message = str(value)[:_MAX_ERROR_MESSAGE]
        return {_ERROR_KEY: {"type": type(value).__name__, "message": message}}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _decode_exception(value: object) -> object:
    error = value.get(_ERROR_KEY) if isinstance(value, dict) and len(value) == 1 else None
    if isinstance(error, dict):
        return JobError(str(error.get("type", "Exception")), str(error.get("message", "")))
    return value


def job_serializer(data: dict[str, Any]) -> bytes:
    """arq's serializer: a job or result record as compact UTF-8 JSON."""
    return json.dumps(
        data,
        default=_encode_exception,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def job_deserializer(raw: bytes) -> dict[str, Any]:
    """arq's deserializer, the inverse of `job_serializer`. Only the outcome of a failed
    job (`r` where `s` is false) is read back as an exception: arguments and results are
    returned as stored, whatever keys their dicts have."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("a job record must be a JSON object")
    if data.get("s") is False and "r" in data:
        data["r"] = _decode_exception(data["r"])
    return data


def check_payload(function: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise `JobPayloadError` unless every argument survives a JSON round trip unchanged."""
    for index, value in enumerate(args):
        _check(function, f"args[{index}]", value)
    for name, value in kwargs.items():
        _check(function, name, value)


def _check(function: str, path: str, value: object) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JobPayloadError(f"job {function!r}: {path} is {value}, which JSON cannot carry")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(function, f"{path}[{index}]", item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise JobPayloadError(
                    f"job {function!r}: {path} has a {type(key).__name__} key; "
                    "JSON object keys must be strings"
                )
            _check(function, f"{path}[{key!r}]", item)
        return
    raise JobPayloadError(
        f"job {function!r}: {path} is a {type(value).__name__}, which is not JSON; pass "
        "str, int, float, bool, None, lists or dicts (an ISO string for a datetime, "
        "str() for a UUID)"
    )
