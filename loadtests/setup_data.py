"""Prepare guests for a load test: ``python -m loadtests.setup_data --guests N --out FILE``.

Sign-in codes are not readable from outside the server, so guests are enrolled and their access
tokens issued **in-process** (``server.lifespan.build_services`` against the same PostgreSQL,
Redis and JWT secret as the server under test: the ``regulars dev`` data directory, or
``REGULARS_DATABASE_URL`` / ``REGULARS_REDIS_URL`` / ``REGULARS_JWT_SECRET`` for staging).
That is set-up, not the measured path. Points are then granted through the public API
(``POST /v1/guests/{id}/adjustments`` with a manager token), so the wallets in Redis and the
ledger in PostgreSQL move exactly as they do in production.

Idempotent: the same phone numbers give the same guests, so running it twice tops up points.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec

from loadtests.common import Guest, SetupData, choose_location

__all__ = ["grant_points", "prepare"]

MANAGER_EMAIL = "manager@demo.regulars.test"
BARISTA_EMAIL = "barista@demo.regulars.test"


def _settings(data_dir: str | None) -> Any:
    from server.infra.embedded import discover
    from server.settings import load_settings

    data_dir = data_dir or os.environ.get("REGULARS_DATA_DIR") or ".regulars"
    settings = load_settings(data_dir=data_dir)
    if settings.database_url and settings.redis_url:
        return settings
    running = discover(Path(data_dir).resolve())
    if running is None:
        sys.exit(
            f"setup_data: no running `regulars dev` under {data_dir}; pass --data-dir or set "
            "REGULARS_DATABASE_URL, REGULARS_REDIS_URL (and REGULARS_JWT_SECRET for staging)"
        )
    return msgspec.structs.replace(
        settings,
        database_url=settings.database_url or running.database_url,
        redis_url=settings.redis_url or running.redis_url,
    )


async def _enrol_all(
    services: Any, phones: list[str], ttl_s: int, concurrency: int
) -> tuple[list[Guest], dict[str, str]]:
    from server.auth.tokens import TokenIssuer
    from server.infra.identity import Principal
    from server.lifespan import jwt_secret

    issuer = TokenIssuer(jwt_secret(services.settings), services.settings.jwt_issuer, ttl_s)
    async with services.db.connection() as conn:
        brand_id = await services.guests.brand_id(conn)
    gate = asyncio.Semaphore(concurrency)

    async def one(phone: str) -> Guest:
        async with gate:
            async with services.db.transaction() as conn:
                guest_id, _, welcome = await services.guests.enrol(
                    conn, brand_id, phone, "Load", "Test"
                )
                row = await conn.fetchrow(
                    "SELECT public_id, qr_secret FROM guests WHERE id = $1", guest_id
                )
            await services.loyalty.mirror_all([welcome])
        token = issuer.issue(Principal(kind="guest", subject_id=guest_id, brand_id=brand_id))
        return Guest(
            id=str(guest_id),
            token=token,
            phone=phone,
            public_id=row["public_id"],
            qr_secret_hex=bytes(row["qr_secret"]).hex(),
        )

    guests = await asyncio.gather(*(one(p) for p in phones))
    staff: dict[str, str] = {}
    async with services.db.connection() as conn:
        for role, email in (("manager", MANAGER_EMAIL), ("barista", BARISTA_EMAIL)):
            staff_id = await conn.fetchval("SELECT id FROM staff_users WHERE email = $1", email)
            if staff_id is not None:
                principal = await services.auth.principal_for(conn, "staff", staff_id)
                staff[role] = issuer.issue(principal)
    return list(guests), staff


async def grant_points(
    base_url: str, manager_token: str, guest_ids: list[str], points: int, concurrency: int = 8
) -> None:
    """One manager adjustment per guest through the API; a retry reuses its key."""
    if points <= 0:
        return
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:

        async def one(guest_id: str) -> None:
            key = str(uuid.uuid4())  # one intended adjustment; retries below reuse it
            async with gate:
                for attempt in range(5):
                    try:
                        r = await http.post(
                            f"/v1/guests/{guest_id}/adjustments",
                            json={"points": points, "reason": "load test set-up"},
                            headers={
                                "Authorization": f"Bearer {manager_token}",
                                "Idempotency-Key": key,
                            },
                        )
                    except httpx.TransportError:
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    if r.status_code == 201:
                        return
                    if r.status_code in (409, 429, 502, 503, 504):
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    raise RuntimeError(f"adjustment for {guest_id}: {r.status_code} {r.text}")
                raise RuntimeError(f"adjustment for {guest_id} kept failing")

        await asyncio.gather(*(one(g) for g in guest_ids))


async def prepare(
    *,
    base_url: str,
    guests: int,
    points: int,
    data_dir: str | None = None,
    phone_start: int = 0,
    ttl_s: int = 4 * 3600,
    location: str | None = None,
    concurrency: int = 8,
) -> SetupData:
    from server.lifespan import build_services

    settings = _settings(data_dir)
    settings = msgspec.structs.replace(settings, db_pool_max=max(concurrency, 2), db_pool_min=1)
    phones = [f"+49157{phone_start + n:08d}" for n in range(guests)]
    services = await build_services(settings)
    try:
        enrolled, staff = await _enrol_all(services, phones, ttl_s, concurrency)
    finally:
        await services.close()
    if "manager" not in staff:
        raise RuntimeError(f"no staff user {MANAGER_EMAIL}; is the demo brand seeded?")
    await grant_points(base_url, staff["manager"], [g.id for g in enrolled], points, concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        locations = (await http.get("/v1/locations")).raise_for_status().json()
        loc = choose_location(locations, location or os.environ.get("REGULARS_LOADTEST_LOCATION"))
        menu = (await http.get(f"/v1/locations/{loc['id']}/menu")).raise_for_status().json()
    items = [i["id"] for c in menu["categories"] for i in c["items"] if i["available"]][:2]
    return SetupData(
        base_url=base_url,
        location_id=loc["id"],
        guests=enrolled,
        staff=staff,
        points_per_guest=points,
        expires_at=(datetime.now(UTC) + timedelta(seconds=ttl_s)).isoformat(timespec="seconds"),
        items=items,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.setup_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--guests", type=int, default=200, help="how many guests (default 200)")
    parser.add_argument("--points", type=int, default=200_000, help="points granted to each")
    parser.add_argument("--out", default="loadtests/reports/setup.json", help="the setup file")
    parser.add_argument(
        "--base-url", default=os.environ.get("REGULARS_BASE_URL", "http://127.0.0.1:8000")
    )
    parser.add_argument("--data-dir", help="the `regulars dev` data directory (default .regulars)")
    parser.add_argument(
        "--phone-start",
        type=int,
        default=0,
        help="guests get phones +49157<start+n, 8 digits>; change to get new guests",
    )
    parser.add_argument("--token-ttl-s", type=int, default=4 * 3600, help="access token lifetime")
    parser.add_argument("--location", help="location id or name part (default: the 24/7 one)")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    started = time.monotonic()
    data = asyncio.run(
        prepare(
            base_url=args.base_url.rstrip("/"),
            guests=args.guests,
            points=args.points,
            data_dir=args.data_dir,
            phone_start=args.phone_start,
            ttl_s=args.token_ttl_s,
            location=args.location,
            concurrency=args.concurrency,
        )
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(data.to_json())
    out.chmod(0o600)  # bearer tokens
    print(
        f"{len(data.guests)} guests with +{args.points} points each, tokens valid until "
        f"{data.expires_at} -> {out} ({time.monotonic() - started:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
