"""Every v1 router and the path it is mounted at, under `API_V1_STR`.

`create_app` includes each one on the app itself rather than through an aggregate
router: every level of nested routers is another match step on every request.
"""

from fastapi import APIRouter

from app.api.v1 import ai, attachments, items, jobs, users, webhooks
from app.api.v1.public import health

ROUTERS: tuple[tuple[APIRouter, str], ...] = (
    (health.router, "/public"),
    (users.router, ""),
    (items.router, ""),
    (attachments.router, ""),
    (jobs.router, ""),
    (webhooks.router, ""),
    (ai.router, ""),
)
