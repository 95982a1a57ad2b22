"""The OpenAPI document and the interactive docs (being written)."""

from __future__ import annotations

from typing import Any

OPENAPI_ROUTES: list[Any] = []
