"""JSON in and out of Redis: round trips, failures, and what is refused."""

from __future__ import annotations

import pickle

import pytest

from app.jobs.serialization import (
    JobError,
    JobPayloadError,
    check_payload,
    job_deserializer,
    job_serializer,
)


def test_job_records_round_trip_as_json() -> None:
    record = {
        "t": 1,
        "f": "export",
        "a": ["é", 1, 2.5, True, None],
        "k": {"filters": {"q": "x", "tags": ["a", "b"]}},
        "et": 1_700_000_000_000,
    }
    raw = job_serializer(record)
    assert raw.startswith(b'{"t":1,"f":"export"')
    assert "é".encode() in raw
    assert job_deserializer(raw) == record


def test_exceptions_are_stored_as_type_and_message_and_read_back_as_job_error() -> None:
    raw = job_serializer({"s": False, "r": ValueError("bad row 7")})
    assert b"Traceback" not in raw
    result = job_deserializer(raw)["r"]
    assert isinstance(result, JobError)
    assert (result.type_name, result.message) == ("ValueError", "bad row 7")
    again = job_deserializer(job_serializer({"s": False, "r": result}))["r"]
    assert again.type_name == "ValueError"


def test_arguments_and_results_shaped_like_a_stored_error_come_back_as_data() -> None:
    lookalike = {"__job_error__": {"type": "ValueError", "message": "just data"}}
    job = job_deserializer(job_serializer({"f": "export", "a": [lookalike], "k": {"x": lookalike}}))
    assert job["a"] == [lookalike]
    assert job["k"] == {"x": lookalike}
    result = job_deserializer(job_serializer({"s": True, "r": lookalike}))
    assert result["r"] == lookalike


def test_pickled_or_malformed_records_are_refused() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (json and utf-8 errors differ in wording)
        job_deserializer(pickle.dumps({"f": "x"}))
    with pytest.raises(ValueError, match="JSON object"):
        job_deserializer(b"[1, 2]")


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((b"raw",), {}, r"args\[0\] is a bytes"),
        ((), {"ids": {1, 2}}, "ids is a set"),
        ((), {"filters": {"since": object()}}, r"filters\['since'\] is a object"),
        ((), {"totals": {3: "three"}}, "int key"),
        (([float("inf")],), {}, r"args\[0\]\[0\] is inf"),
    ],
)
def test_non_json_payloads_are_rejected_naming_the_argument(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(JobPayloadError, match=message) as caught:
        check_payload("export", args, kwargs)
    assert "job 'export'" in str(caught.value)


def test_json_payloads_pass() -> None:
    check_payload("export", ("a", 1, 2.0, None, [True]), {"nested": {"list": [{"k": "v"}]}})
