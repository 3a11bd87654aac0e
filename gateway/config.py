"""The gateway's own settings (``FALQ_API_KEYS`` ...), read like every other falq setting.

They live here rather than in :mod:`falq.shared.settings` because only ``falq api`` reads them.
Each field's ``description`` is its documentation: docs/reference/configuration.md is generated
from it (``make docs-gen``).

Example::

    >>> GatewaySettings(api_keys="k1, k2").key_list()
    ['k1', 'k2']
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from falq.shared.errors import PermanentError


class GatewayConfigError(PermanentError):
    """The gateway cannot start as configured (e.g. no API keys and not ``--unauthenticated``)."""

    kind = "gateway_config"


class GatewaySettings(BaseSettings):
    """Settings only the HTTP gateway reads. Secrets print as ``**********``."""

    model_config = SettingsConfigDict(env_prefix="FALQ_", env_file=".env", env_file_encoding="utf-8", extra="ignore")

    api_keys: SecretStr | None = Field(
        None,
        description=(
            "Comma-separated operator API keys (`default` tenant, `admin` scope), presented as"
            " `Authorization: Key <k>` (as fal's clients send) or `Bearer <k>`; compared in constant time."
        ),
    )
    gateway_public_url: str | None = Field(
        None,
        description="Base URL put into `status_url`, `response_url` and `cancel_url` (unset: the request's own).",
    )
    fal_jwks_url: str | None = Field(
        None,
        description="Public keys (JWKS) that verify fal's webhooks at `/_falq/fal-webhook` (unset: fal's own JWKS).",
    )

    def key_list(self) -> list[str]:
        """The configured API keys (empty entries dropped)."""
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        return [k.strip() for k in raw.split(",") if k.strip()]
