"""Responses that hand a stored file to the client.

With a backend that makes presigned URLs (S3), the API answers `307` to a URL valid
for `STORAGE_URL_TTL` seconds and the bytes go straight from the bucket to the client;
otherwise the file is streamed through the API in chunks, never read whole.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import RedirectResponse, Response

from app.api.responses import ReleasingStream
from app.core.exceptions import NotFoundError
from app.integrations.storage import ObjectNotFoundError, Storage, content_disposition

# Neither the redirect (its URL expires) nor a private file may be cached on the way.
_NO_STORE = {"Cache-Control": "private, no-store"}


def download_responses(media_type: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a download route."""
    return {
        200: {"content": {media_type: {}}, "description": "The file (streamed)."},
        307: {"description": "A redirect to a short-lived URL of the file."},
    }


async def file_download(
    storage: Storage,
    key: str,
    *,
    filename: str,
    media_type: str,
    url_ttl: int,
    missing: str,
) -> Response:
    """The file under `key` as a download named `filename`; 404 with `missing` as the
    message if there is none."""
    if storage.supports_presigned_urls:
        if not await storage.exists(key):
            raise NotFoundError(missing)
        url = await storage.presigned_url(
            key, expires_in=url_ttl, filename=filename, content_type=media_type
        )
        return RedirectResponse(url, status_code=307, headers=_NO_STORE)
    try:
        stored = await storage.open(key)
    except ObjectNotFoundError:
        raise NotFoundError(missing) from None
    headers = {
        **_NO_STORE,
        "Content-Disposition": content_disposition(filename),
        "Content-Length": str(stored.size),
    }
    return ReleasingStream(
        aiter(stored), release=stored.aclose, media_type=media_type, headers=headers
    )
