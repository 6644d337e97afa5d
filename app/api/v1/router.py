"""Every v1 router, mounted under `API_V1_STR`."""

from fastapi import APIRouter

from app.api.v1 import items, jobs, users
from app.api.v1.public import health

api_router = APIRouter()
api_router.include_router(health.router, prefix="/public")
api_router.include_router(users.router)
api_router.include_router(items.router)
api_router.include_router(jobs.router)
