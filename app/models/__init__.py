"""Table models. Import every model here so Alembic and `init_db` see all tables."""

from app.models.attachment import ItemAttachment
from app.models.base import BaseTable, SoftDeleteMixin
from app.models.idempotency import IdempotencyRecord
from app.models.item import Item, ItemStatus
from app.models.job_outbox import OutboxJob
from app.models.subscription import Subscription
from app.models.user import User
from app.models.webhook_event import WebhookEvent, WebhookStatus

__all__ = [
    "BaseTable",
    "IdempotencyRecord",
    "Item",
    "ItemAttachment",
    "ItemStatus",
    "OutboxJob",
    "SoftDeleteMixin",
    "Subscription",
    "User",
    "WebhookEvent",
    "WebhookStatus",
]
