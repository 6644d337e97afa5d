"""Logging set-up: human-readable lines in development, JSON lines elsewhere.

Every record logged while a request is being served carries that request's id, read
from a context variable the request middleware sets; once tracing is configured, every
record logged inside a span also carries its `trace_id` and `span_id` (hex).

Output goes to stderr through a block buffer that holds back only access-log lines.
The access log, one line per request, is written straight to that handler when it is
the only one configured, which keeps its cost per request to a few microseconds; with
any other handler or filter in place, or inside a span, it goes through `logging` like
everything else.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from json import dumps
from typing import Any, Literal

from opentelemetry.trace import get_current_span

_HANDLER_NAME = "app"
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
ACCESS_LOGGER = "app.access"
ACCESS_MESSAGE = "request completed"
access_logger = logging.getLogger(ACCESS_LOGGER)

# Attributes every LogRecord has; anything else was passed through `extra=`, except
# Libraries whose INFO and DEBUG lines describe outgoing requests.
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "openai", "botocore", "aiobotocore", "stripe")

# uvicorn's `color_message` (its message again, with terminal colour codes).
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "request_id", "taskName", "color_message"}
)

_base_factory = logging.getLogRecordFactory()
# Set by tracing.configure_tracing; until then no record looks for a span.
_trace_ids = False


def include_trace_ids() -> None:
    """Stamp every record logged inside a valid span with its trace and span ids."""
    global _trace_ids
    _trace_ids = True


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span; None outside one or with tracing off."""
    if not _trace_ids:
        return None
    context = get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    record.request_id = request_id_var.get()
    if _trace_ids and (ids := current_trace_ids()) is not None:
        record.trace_id, record.span_id = ids
    return record


def _extras(record: logging.LogRecord) -> dict[str, object]:
    fields = record.__dict__
    return {key: fields[key] for key in fields.keys() - _STANDARD_ATTRS}


class _Clock:
    """Timestamps formatted with `pattern`, the seconds part computed once per second."""

    def __init__(self, pattern: str, convert: Any) -> None:
        self._pattern = pattern
        self._convert = convert
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime(self._pattern, self._convert(second))
        return f"{self._prefix}.{int((created - second) * 1000):03d}"


class LineFormatter(logging.Formatter):
    """A formatter that can also render a line from plain fields (the access-log path)."""

    def render(
        self,
        created: float,
        level: str,
        name: str,
        message: str,
        request_id: str | None,
        extras: Mapping[str, object],
        exc_text: str | None = None,
    ) -> str:
        raise NotImplementedError

    def render_access(
        self,
        created: float,
        request_id: str | None,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
    ) -> str:
        """The access-log line for one request (what `render` gives for its record)."""
        fields = {"method": method, "path": path, "status": status, "duration_ms": duration_ms}
        return self.render(created, "INFO", ACCESS_LOGGER, ACCESS_MESSAGE, request_id, fields)

    def format(self, record: logging.LogRecord) -> str:
        exc_text = self.formatException(record.exc_info) if record.exc_info else None
        return self.render(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            getattr(record, "request_id", None),
            _extras(record),
            exc_text,
        )


class JsonFormatter(LineFormatter):
    """One JSON object per line, with `extra=` fields at the top level."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def render(
        self,
        created: float,
        level: str,
        name: str,
        message: str,
        request_id: str | None,
        extras: Mapping[str, object],
        exc_text: str | None = None,
    ) -> str:
        payload: dict[str, object] = {
            "ts": self._clock(created) + "Z",
            "level": level,
            "logger": name,
            "message": message,
            "request_id": request_id,
            **extras,
        }
        if exc_text:
            payload["exc_info"] = exc_text
        return json.dumps(payload, default=str, ensure_ascii=False)

    _ACCESS_PREFIX = (
        f'", "level": "INFO", "logger": "{ACCESS_LOGGER}", "message": "{ACCESS_MESSAGE}"'
    )

    def render_access(
        self,
        created: float,
        request_id: str | None,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
    ) -> str:
        # The same object `render` produces, assembled by hand because this line is
        # written once per request. Request ids (validated or generated), methods (HTTP
        # tokens) and most paths need no escaping; anything else goes through json.dumps.
        return (
            f'{{"ts": "{self._clock(created)}Z{self._ACCESS_PREFIX}, '
            f'"request_id": {_json_string(request_id)}, "method": {_json_string(method)}, '
            f'"path": {_json_string(path)}, "status": {status:d}, '
            f'"duration_ms": {duration_ms!r}}}'
        )


_PLAIN = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")  # printable ASCII but " and \


def _json_string(value: str | None) -> str:
    if value is None:
        return "null"
    return f'"{value}"' if _PLAIN.fullmatch(value) else dumps(value, ensure_ascii=False)


class ConsoleFormatter(LineFormatter):
    """`time level [request id] logger: message key=value ...` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock("%H:%M:%S", time.localtime)

    def render(
        self,
        created: float,
        level: str,
        name: str,
        message: str,
        request_id: str | None,
        extras: Mapping[str, object],
        exc_text: str | None = None,
    ) -> str:
        line = f"{self._clock(created)} {level:<7} [{request_id or '-'}] {name}: {message}"
        if extras:
            line += " " + " ".join(f"{key}={value}" for key, value in extras.items())
        return f"{line}\n{exc_text}" if exc_text else line


class BufferedStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stderr through a block buffer instead of one system call per line.

    Only access-log lines wait in the buffer (they are the volume: one per request).
    Every other record is written at once, taking any waiting access lines with it, so
    start-up, shutdown and error messages are never held back, even when the process
    ends by a signal; access lines otherwise leave at least every `FLUSH_INTERVAL`
    seconds (a daemon thread) and when logging shuts down.
    """

    FLUSH_INTERVAL = 0.5

    def __init__(self, fileno: int) -> None:
        stream = open(  # noqa: SIM115 (closed in close())
            fileno,
            "w",
            buffering=1 << 16,
            encoding="utf-8",
            errors="backslashreplace",
            closefd=False,
        )
        super().__init__(stream)
        self._write_lock = self.lock or threading.RLock()
        self._stopped = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_periodically, name="log-flush", daemon=True
        )
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            if record.name != ACCESS_LOGGER:
                self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """Append a pre-formatted line (the access log's fast path)."""
        with self._write_lock:
            self.stream.write(line + "\n")

    def _flush_periodically(self) -> None:
        while not self._stopped.wait(self.FLUSH_INTERVAL):
            self.flush()

    def close(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._flusher.join(timeout=self.FLUSH_INTERVAL * 4)
        self.flush()
        super().close()
        self.stream.close()


def _stderr_handler() -> logging.Handler:
    try:
        fileno = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by something without an fd
        return logging.StreamHandler(sys.stderr)
    return BufferedStderrHandler(fileno)


def _direct_access_handler() -> BufferedStderrHandler | None:
    """The app's handler, when writing to it directly is what `logging` would do anyway."""
    handlers = logging.root.handlers
    if len(handlers) != 1 or access_logger.handlers or access_logger.filters:
        return None
    handler = handlers[0]
    if not isinstance(handler, BufferedStderrHandler) or handler.filters:
        return None
    if handler.level > logging.INFO or not access_logger.propagate:
        return None
    return handler


def log_access(
    request_id: str | None, method: str, path: str, status: int, duration_ms: float
) -> None:
    """Write the access-log line for one request."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    handler = _direct_access_handler()
    formatter = handler.formatter if handler is not None else None
    # Inside a span the line goes through `logging`, which adds the trace ids.
    traced = _trace_ids and current_trace_ids() is not None
    if handler is None or not isinstance(formatter, LineFormatter) or traced:
        fields = {"method": method, "path": path, "status": status, "duration_ms": duration_ms}
        access_logger.info(ACCESS_MESSAGE, extra=fields)
        return
    line = formatter.render_access(time.time(), request_id, method, path, status, duration_ms)
    handler.write_line(line)


def setup_logging(level: str, fmt: Literal["console", "json"]) -> None:
    """Route the root logger (and uvicorn's) to one stderr handler in the chosen format."""
    # Stamping at record creation gives every handler (test capture included) the id.
    logging.setLogRecordFactory(_record_with_request_id)
    # Neither format prints caller, thread or process details; not collecting them
    # makes every record cheaper to create (the logging HOWTO's "Optimization" advice).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _stderr_handler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for previous in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(previous)
        previous.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # The request middleware writes the access log; uvicorn's would duplicate it.
    logging.getLogger("uvicorn.access").disabled = True
    # HTTP clients and SDKs log every request (URLs, options, bodies) at INFO and DEBUG:
    # other services' addresses and the data sent to them stay out of the log.
    quiet = max(logging.getLevelNamesMapping()[level], logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
