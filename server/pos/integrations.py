"""POS integrations and their signing keys: created by an admin (API or CLI), a secret shown
once, at most ``pos_keys_active_max`` active keys for rotation, revocation immediate. Their
webhook (URL and Standard Webhooks secret) can be set, replaced or removed later; a replaced
secret signs beside the new one for a while (server/pos/webhooks.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

import asyncpg
import msgspec
from msgspec import Meta, Struct

from server.infra.db import Database
from server.infra.problems import Problem
from server.pos import sql
from server.pos.sealing import Sealer, digest, new_key_id, new_secret
from server.pos.webhook_model import new_webhook_secret
from server.pos.webhook_net import url_refusal
from server.settings import Settings

__all__ = [
    "IntegrationCreated",
    "IntegrationIn",
    "IntegrationView",
    "Integrations",
    "KeyCreated",
    "KeyView",
    "WebhookIn",
    "WebhookSet",
]

WebhookUrl = Annotated[str, Meta(max_length=2000, pattern=r"^https?://")]
VendorStoreId = Annotated[str, Meta(min_length=1, max_length=200)]


class IntegrationIn(Struct, kw_only=True, frozen=True):
    location_id: UUID
    webhook_url: WebhookUrl | None = None
    # The vendor's id of this store (Square ``location_id``, Loyverse ``store_id``): vendor
    # payloads from another store are then refused (422 ``vendor-store-mismatch``).
    vendor_store_id: VendorStoreId | None = None


class KeyCreated(Struct, kw_only=True, frozen=True):
    """A new key: ``secret`` is shown this once and never again."""

    integration_id: UUID
    key_id: str
    secret: str


class IntegrationCreated(Struct, kw_only=True, frozen=True):
    integration_id: UUID
    key_id: str
    secret: str
    location_id: UUID
    webhook_url: str | None = None
    vendor_store_id: str | None = None
    # With a webhook_url: the Standard Webhooks secret the till verifies deliveries with
    # (server/pos/webhooks.py); shown this once, like the key's secret.
    webhook_secret: str | None = None


class WebhookIn(Struct, kw_only=True, frozen=True):
    """Where the integration's till takes its webhooks now; null: it polls instead."""

    webhook_url: WebhookUrl | None
    # False for a secret that leaked: the one replaced stops signing at once.
    keep_previous_secret: bool = True


class WebhookSet(Struct, kw_only=True, frozen=True):
    integration_id: UUID
    webhook_url: str | None
    # The new Standard Webhooks secret, shown this once (null when the webhook was removed).
    webhook_secret: str | None = None
    # Until then deliveries are signed with the secret replaced too, so a till that still
    # verifies with it accepts them while it is switched over.
    previous_secret_valid_until: datetime | None = None


class KeyView(Struct, kw_only=True, frozen=True):
    key_id: str
    # SHA-256 of the secret: tells keys apart without revealing them.
    digest: str
    created_at: datetime
    revoked_at: datetime | None = None


class IntegrationView(Struct, kw_only=True, frozen=True):
    id: UUID
    location_id: UUID
    webhook_url: str | None
    created_at: datetime
    keys: list[KeyView]
    vendor_store_id: str | None = None
    # While a replaced webhook secret still signs beside the new one.
    webhook_previous_until: datetime | None = None


class Integrations:
    def __init__(self, settings: Settings, db: Database, sealer: Sealer) -> None:
        self.settings = settings
        self.db = db
        self.sealer = sealer

    async def create(self, body: IntegrationIn, brand_id: UUID | None = None) -> IntegrationCreated:
        """A new integration for a location of ``brand_id`` (any brand when None: the CLI),
        with its first key, and a webhook secret when it has a webhook_url. Refuses 404
        ``location-not-found``, 422 ``webhook-url-not-allowed`` for a URL that is not https or
        names an internal host (server/pos/webhook_net.py)."""
        self._check_url(body.webhook_url)
        webhook_secret = new_webhook_secret() if body.webhook_url else None
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                sql.INSERT_INTEGRATION,
                body.location_id,
                body.webhook_url,
                brand_id,
                self.sealer.seal(webhook_secret) if webhook_secret else None,
                body.vendor_store_id,
            )
            if row is None:
                raise Problem(404, "location-not-found", f"no location {body.location_id}")
            key = await self._new_key(conn, row["id"])
        return IntegrationCreated(
            integration_id=row["id"],
            key_id=key.key_id,
            secret=key.secret,
            location_id=row["location_id"],
            webhook_url=row["webhook_url"],
            vendor_store_id=row["vendor_store_id"],
            webhook_secret=webhook_secret,
        )

    async def add_key(self, brand_id: UUID, integration_id: UUID) -> KeyCreated:
        """A second key for rotation. Refuses 409 ``too-many-keys`` while the integration has
        ``pos_keys_active_max`` active keys (revoke one first)."""
        async with self.db.transaction() as conn:
            if await conn.fetchrow(sql.INTEGRATION_FOR_UPDATE, integration_id, brand_id) is None:
                raise Problem(404, "integration-not-found", f"no integration {integration_id}")
            return await self._new_key(conn, integration_id)

    async def set_webhook(
        self, brand_id: UUID | None, integration_id: UUID, body: WebhookIn
    ) -> WebhookSet:
        """Point the integration's webhooks at ``body.webhook_url`` with a new signing secret
        (shown this once), or remove them (null). The secret replaced signs beside the new one
        for ``pos_webhook_secret_overlap_s``, so the till can be switched over without
        refusing a delivery (not with ``keep_previous_secret`` false: a secret that leaked);
        a removal stops both at once. Refuses 404
        ``integration-not-found`` (another brand's, or disabled), 422
        ``webhook-url-not-allowed`` as :meth:`create` does."""
        url = body.webhook_url
        self._check_url(url)
        secret = new_webhook_secret() if url else None
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(sql.INTEGRATION_FOR_UPDATE, integration_id, brand_id)
            if row is None:
                raise Problem(404, "integration-not-found", f"no integration {integration_id}")
            keep = url and body.keep_previous_secret
            previous, until = self._replaced(row) if keep else (None, None)
            stored = await conn.fetchrow(
                sql.SET_WEBHOOK,
                integration_id,
                url,
                self.sealer.seal(secret) if secret else None,
                previous,
                until,
            )
        assert stored is not None  # locked above
        return WebhookSet(
            integration_id=integration_id,
            webhook_url=stored["webhook_url"],
            webhook_secret=secret,
            previous_secret_valid_until=stored["webhook_previous_until"],
        )

    def _check_url(self, url: str | None) -> None:
        """422 ``webhook-url-not-allowed`` for a URL that is not https or names an internal
        host (server/pos/webhook_net.py), unless ``pos_webhook_private_ok``."""
        refusal = url and url_refusal(url)
        if refusal and not self.settings.pos_webhook_private_ok:
            raise Problem(422, "webhook-url-not-allowed", refusal)

    def _replaced(self, row: asyncpg.Record) -> tuple[bytes | None, datetime | None]:
        """The integration's current secret, sealed, to sign beside a new one, and until
        when; (None, None) when it has none or the overlap is 0."""
        overlap_s = self.settings.pos_webhook_secret_overlap_s
        sealed = row["webhook_secret_sealed"]
        if sealed is None and row["webhook_secret"]:  # stored in the clear before 0028
            sealed = self.sealer.seal(row["webhook_secret"])
        if sealed is None or overlap_s == 0:
            return None, None
        return bytes(sealed), datetime.now(UTC) + timedelta(seconds=overlap_s)

    async def _new_key(self, conn: asyncpg.Connection, integration_id: UUID) -> KeyCreated:
        active = await conn.fetchval(sql.ACTIVE_KEYS, integration_id)
        if active >= self.settings.pos_keys_active_max:
            raise Problem(
                409,
                "too-many-keys",
                f"an integration has at most {self.settings.pos_keys_active_max} active keys;"
                " revoke one first",
            )
        key_id, secret = new_key_id(), new_secret()
        await conn.execute(
            sql.INSERT_KEY, key_id, integration_id, self.sealer.seal(secret), digest(secret)
        )
        return KeyCreated(integration_id=integration_id, key_id=key_id, secret=secret)

    async def revoke(self, brand_id: UUID, integration_id: UUID, key_id: str) -> None:
        """Revoke a key: the next request signed with it is refused. 404 ``key-not-found``
        for a key that is not an active key of this integration."""
        async with self.db.transaction() as conn:
            if await conn.fetchval(sql.REVOKE_KEY, key_id, integration_id, brand_id) is None:
                raise Problem(404, "key-not-found", f"no active key {key_id} on this integration")

    async def list(self, brand_id: UUID) -> list[IntegrationView]:
        rows = await self.db.fetch(sql.INTEGRATIONS_OF_BRAND, brand_id)
        return [
            IntegrationView(
                id=r["id"],
                location_id=r["location_id"],
                webhook_url=r["webhook_url"],
                vendor_store_id=r["vendor_store_id"],
                webhook_previous_until=r["webhook_previous_until"],
                created_at=r["created_at"],
                keys=msgspec.convert(r["keys"], list[KeyView]),
            )
            for r in rows
        ]
