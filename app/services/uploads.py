"""Checks on an uploaded file's bytes as they stream in: a size limit, and a content
type confirmed by the file's own first bytes (the declared type alone proves nothing).

`checked_upload` reads just enough to recognise the file, then hands back its type and
the whole stream, which raises `PayloadTooLargeError` the moment the limit is crossed;
storage writes are all or nothing, so a refused upload leaves nothing stored.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Collection

from app.core.exceptions import PayloadTooLargeError, UnsupportedMediaTypeError, ValidationError

# The first bytes of each accepted type (what `UPLOAD_ALLOWED_TYPES` may list).
_SIGNATURES: dict[str, Callable[[bytes], bool]] = {
    "image/png": lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": lambda head: head.startswith(b"\xff\xd8\xff"),
    "image/gif": lambda head: head[:6] in (b"GIF87a", b"GIF89a"),
    "image/webp": lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP",
    "application/pdf": lambda head: head.startswith(b"%PDF-"),
}
SNIFF_BYTES = 12
MAX_FILENAME_LENGTH = 255


def sniff(head: bytes) -> str | None:
    """The accepted type whose signature `head` starts with, if any."""
    return next((kind for kind, matches in _SIGNATURES.items() if matches(head)), None)


def media_type(header: str | None) -> str:
    """`image/png` of a `Content-Type` header such as `Image/PNG; charset=binary`."""
    return (header or "").partition(";")[0].strip().lower()


def safe_filename(name: str) -> str:
    """A display name from a client's file name: no directories, no control or format
    characters, no leading dots, at most 255 characters; never used as a path."""
    base = re.split(r"[\\/]", name)[-1]
    visible = (ch for ch in base if ch == " " or unicodedata.category(ch)[0] not in "CZ")
    cleaned = "".join(visible)
    cleaned = cleaned.strip().lstrip(".").strip()
    return cleaned[:MAX_FILENAME_LENGTH] or "file"


async def checked_upload(
    chunks: AsyncIterator[bytes], *, declared: str, allowed: Collection[str], max_bytes: int
) -> tuple[str, AsyncIterator[bytes]]:
    """The upload's content type, confirmed from its first bytes, and its whole stream
    limited to `max_bytes`. 415 for a type not allowed or not matching the bytes, 413
    past the limit, 422 for an empty body."""
    if declared not in allowed:
        raise UnsupportedMediaTypeError(
            f"Content-Type {declared or '(none)'} is not accepted; send one of "
            f"{', '.join(sorted(allowed))}."
        )
    head = b""
    async for chunk in chunks:
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break
    if not head:
        raise ValidationError("The file is empty.")
    if len(head) > max_bytes:
        raise PayloadTooLargeError(f"The file is larger than {max_bytes} bytes.")
    if sniff(head) != declared:
        raise UnsupportedMediaTypeError(f"The content is not a {declared} file.")

    async def limited() -> AsyncIterator[bytes]:
        size = len(head)
        yield head
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLargeError(f"The file is larger than {max_bytes} bytes.")
            yield chunk

    return declared, limited()
