"""Excel: placeholder router (filled in by the Excel work)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["excel"])
