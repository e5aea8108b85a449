"""The audit log: one row per sensitive act, written in the transaction of the act itself."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from server.infra.identity import Principal

__all__ = ["AUDIT", "audit", "audit_device"]

AUDIT = """
INSERT INTO audit_log (brand_id, actor_kind, actor_id, device_id, action, guest_id, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


async def audit(
    conn: asyncpg.Connection,
    actor: Principal,
    action: str,
    guest_id: UUID | None,
    detail: dict[str, Any],
) -> None:
    """One audit_log row: who (and on which device) did what to whom. Rolls back with the
    caller's transaction, so a refused act leaves no entry."""
    await conn.execute(
        AUDIT,
        actor.brand_id,
        actor.kind,
        actor.subject_id,
        actor.device_id,
        action,
        guest_id,
        detail,
    )


async def audit_device(
    conn: asyncpg.Connection,
    *,
    brand_id: UUID,
    device_id: UUID,
    action: str,
    detail: dict[str, Any],
) -> None:
    """:func:`audit` for what a kiosk device does before anyone signs in on it (pairing)."""
    await conn.execute(AUDIT, brand_id, "device", None, device_id, action, None, detail)
