import json
import logging
import os
from collections.abc import Iterator

import pytest

from app.core.logging import (
    BufferedStderrHandler,
    ConsoleFormatter,
    JsonFormatter,
    log_access,
    request_id_var,
    setup_logging,
)


@pytest.fixture(autouse=True)
def _app_logging() -> None:
    setup_logging("INFO", "json")  # installs the record factory that stamps request ids


@pytest.fixture
def pipe_handler() -> Iterator[tuple[BufferedStderrHandler, int]]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    handler = BufferedStderrHandler(write_fd)
    handler.setFormatter(JsonFormatter())
    try:
        yield handler, read_fd
    finally:
        handler.close()
        os.close(read_fd)
        os.close(write_fd)


def read_lines(fd: int) -> list[dict[str, object]]:
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return []
    return [json.loads(line) for line in data.decode().splitlines()]


def record(level: int, message: str, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("app.test.logging")
    return logger.makeRecord(logger.name, level, "", 0, message, (), None, extra=extra)


def access_record(message: str) -> logging.LogRecord:
    logger = logging.getLogger("app.access")
    return logger.makeRecord(logger.name, logging.INFO, "", 0, message, (), None)


def test_only_access_lines_wait_in_the_buffer(
    pipe_handler: tuple[BufferedStderrHandler, int],
) -> None:
    handler, read_fd = pipe_handler
    handler.handle(access_record("request 1"))
    assert read_lines(read_fd) == []
    handler.handle(record(logging.INFO, "shutting down"))
    lines = read_lines(read_fd)
    assert [line["message"] for line in lines] == ["request 1", "shutting down"]
    handler.handle(access_record("request 2"))
    handler.close()
    assert [line["message"] for line in read_lines(read_fd)] == ["request 2"]


def test_json_lines_carry_level_logger_request_id_and_extras() -> None:
    token = request_id_var.set("rid-7")
    try:
        line = json.loads(JsonFormatter().format(record(logging.INFO, "hello", user="u1")))
    finally:
        request_id_var.reset(token)
    assert line["level"] == "INFO"
    assert line["logger"] == "app.test.logging"
    assert line["message"] == "hello"
    assert line["request_id"] == "rid-7"
    assert line["user"] == "u1"
    assert str(line["ts"]).endswith("Z")


def test_console_lines_are_readable() -> None:
    line = ConsoleFormatter().format(record(logging.WARNING, "disk low", free_mb=12))
    assert "WARNING" in line
    assert "[-] app.test.logging: disk low free_mb=12" in line


@pytest.mark.parametrize(
    "path", ["/things", '/quote"d', "/back\\slash", "/caf\u00e9 \u2603", "/tab\there", "/nul\u0000"]
)
def test_access_lines_are_the_same_on_the_direct_path_and_through_logging(
    pipe_handler: tuple[BufferedStderrHandler, int], path: str
) -> None:
    handler, read_fd = pipe_handler
    root = logging.getLogger()
    saved, saved_level = root.handlers[:], root.level
    root.handlers[:] = [handler]  # the production set-up: the app's handler alone
    root.setLevel(logging.INFO)
    try:
        log_access("rid-direct", "GET", path, 200, 1.5)
    finally:
        root.handlers[:] = saved
        root.setLevel(saved_level)
    handler.flush()
    (direct,) = read_lines(read_fd)
    fields = {"method": "GET", "path": path, "status": 200, "duration_ms": 1.5}
    token = request_id_var.set("rid-direct")
    try:
        expected = json.loads(
            JsonFormatter().format(
                logging.getLogger("app.access").makeRecord(
                    "app.access", logging.INFO, "", 0, "request completed", (), None, extra=fields
                )
            )
        )
    finally:
        request_id_var.reset(token)
    direct.pop("ts")
    expected.pop("ts")
    assert direct == expected


def test_setup_logging_replaces_its_own_handler_only() -> None:
    foreign = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(foreign)
    try:
        setup_logging("INFO", "json")
        setup_logging("INFO", "console")
        ours = [h for h in root.handlers if h.get_name() == "app"]
        assert len(ours) == 1
        assert isinstance(ours[0].formatter, ConsoleFormatter)
        assert foreign in root.handlers
    finally:
        root.removeHandler(foreign)


def test_uvicorn_colour_codes_stay_out_of_log_lines() -> None:
    logger = logging.getLogger("uvicorn.error")
    coloured = logger.makeRecord(
        logger.name, logging.INFO, "", 0, "Started server process [%d]", (42,), None,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
    )  # fmt: skip
    assert "color_message" not in json.loads(JsonFormatter().format(coloured))
    assert "\x1b" not in ConsoleFormatter().format(coloured)
