"""Client keys: who is calling, which models it may use, its rate and its budget.

Keys are kept as sha256 digests only; a presented key is hashed and looked up, so the configured
secrets never sit in memory as text and never reach a log, a metric or an error body.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from gateway.config import AuthSettings, BudgetSettings, ClientKeySettings
from gateway.errors import PermissionDenied, Unauthorized


def hash_key(key: str) -> str:
    """The sha256 hex digest a config stores instead of the key (`python -m gateway hash-key KEY`)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ClientKey:
    """An authenticated caller."""

    name: str
    models: frozenset[str] | None  # None: every model
    requests_per_minute: int | None
    budget: BudgetSettings

    def check_model(self, model: str) -> None:
        """403, not OpenAI's 404: the model exists, and telling the caller so saves them a support ticket."""
        if self.models is not None and model not in self.models:
            raise PermissionDenied(
                f"the API key '{self.name}' may not use model '{model}'", param="model", code="model_not_allowed"
            )


def _digest(settings: ClientKeySettings) -> str:
    if settings.key is not None:
        return hash_key(settings.key.get_secret_value())
    assert settings.key_sha256 is not None
    return settings.key_sha256.lower()


class KeyRing:
    """The configured client keys and the admin key, by digest."""

    def __init__(self, settings: AuthSettings) -> None:
        self._keys = {
            _digest(k): ClientKey(
                k.name, None if "*" in k.models else frozenset(k.models), k.requests_per_minute, k.budget
            )
            for k in settings.keys
        }
        admin = settings.admin_key.get_secret_value() if settings.admin_key is not None else None
        self._admin = hash_key(admin) if admin is not None else (settings.admin_key_sha256 or "").lower() or None

    @property
    def is_open(self) -> bool:
        """No client keys configured: anyone may embed."""
        return not self._keys

    def authenticate(self, authorization: str | None) -> ClientKey | None:
        """The caller's key (None when the gateway is open), or 401."""
        if self.is_open:
            return None
        digest = self._presented(authorization)
        key = self._keys.get(digest) if digest else None
        if key is None:
            raise Unauthorized(_unauthorized_message(authorization), code="invalid_api_key")
        return key

    def check_admin(self, authorization: str | None) -> None:
        """`GET /v1/usage`: the admin key; open when no keys at all are configured."""
        if self._admin is None:
            if self.is_open:
                return
            raise PermissionDenied("no admin key is configured (auth.admin_key_sha256)", code="admin_key_required")
        digest = self._presented(authorization)
        if digest is None:
            raise Unauthorized(_unauthorized_message(authorization), code="invalid_api_key")
        if not hmac.compare_digest(digest, self._admin):
            raise PermissionDenied("this route needs the admin key", code="admin_key_required")

    @staticmethod
    def _presented(authorization: str | None) -> str | None:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        return hash_key(token) if scheme.lower() == "bearer" and token else None


def _unauthorized_message(authorization: str | None) -> str:
    """OpenAI's wording, without echoing the key (OpenAI echoes a masked prefix; we echo nothing)."""
    if not authorization:
        return "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
    return "Incorrect API key provided."
