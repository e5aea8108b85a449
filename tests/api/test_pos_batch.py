"""``POST /v1/pos/receipts:batch``: NDJSON streamed in chunks, one result per line; malformed
lines are refused alone, the rest lands; a batch whose signature fails lands nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from server.auth.notifier import RecordingNotifier
from server.pos.integrations import IntegrationIn
from server.settings import Settings
from tests.api.helpers import assert_books_balance
from tests.api.pos_support import SignedTill, external_id, new_till, receipt_body, slug
from tests.conftest import Client, Demo, app_client, sign_in

BATCH = "/v1/pos/receipts:batch"


async def chunks(body: bytes, size: int = 997) -> AsyncIterator[bytes]:
    """The body as a till streams it: chunks that cut lines anywhere."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def send(till: SignedTill, body: bytes, signed: bytes | None = None) -> httpx.Response:
    headers = {**till.signed_headers(signed if signed is not None else body)}
    headers["Content-Type"] = "application/x-ndjson"
    return await till.client.post(BATCH, content=chunks(body), headers=headers)


async def landed(services: Any, ids: list[str]) -> int:
    return int(
        await services.db.fetchval(
            "SELECT count(*) FROM receipt_keys WHERE external_id = ANY($1::text[])", ids
        )
    )


async def test_1000_lines_with_3_malformed_land_997_and_report_3(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    lines: list[bytes] = []
    ids: list[str] = []
    for n in range(1, 1001):
        body = receipt_body(till, guest={"phone": guest.phone} if n % 3 == 0 else None)
        ids.append(body["external_id"])
        lines.append(json.dumps(body).encode())
    lines[9] = b'{"external_id": "broken", "lines": ['  # line 10: not JSON
    lines[499] = json.dumps({"external_id": external_id()}).encode()  # line 500: no lines
    bad_quantity = receipt_body(till, {"name": "X", "quantity": "-1", "unit_price_minor": 5})
    lines[999] = json.dumps(bad_quantity).encode()  # line 1000: refused by the intake
    raw = b"\n".join(lines) + b"\n"

    response = await send(till, raw)
    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["line"] for r in results] == list(range(1, 1001))
    refused = [r for r in results if r["status"] == "refused"]
    assert [r["line"] for r in refused] == [10, 500, 1000]
    assert [slug_of(r) for r in refused] == ["malformed-json", "validation-error", "invalid-line"]
    created = [r for r in results if r["status"] == "created"]
    assert len(created) == 997 and all(r["receipt_id"] for r in created)
    assert await landed(services, ids) == 997

    # The same file again (signed afresh): nothing new, every good line replayed.
    again = (await send(till, raw)).json()
    assert sum(r["status"] == "replayed" for r in again) == 997
    assert [r["receipt_id"] for r in again if r["status"] == "replayed"] == [
        r["receipt_id"] for r in created
    ]
    receipts = await services.db.fetchval(
        "SELECT count(*) FROM receipts WHERE guest_id = $1", guest.id
    )
    assert receipts == 333
    await assert_books_balance(services, demo.brand_id)


def slug_of(result: dict[str, Any]) -> str:
    return str(result["problem"]["type"]).rsplit("/", 1)[-1]


async def test_a_batch_whose_signature_fails_lands_nothing(
    client: Client, demo: Demo, services: Any
) -> None:
    till = await new_till(client, demo)
    bodies = [receipt_body(till) for _ in range(5)]
    raw = b"\n".join(json.dumps(b).encode() for b in bodies)
    tampered = raw.replace(b"Cappuccino", b"Cappuccinx", 1)
    response = await send(till, tampered, signed=raw)
    assert response.status_code == 401 and slug(response) == "invalid-signature"
    assert await landed(services, [b["external_id"] for b in bodies]) == 0
    ndjson = {"Content-Type": "application/x-ndjson"}
    unsigned = await client.post(BATCH, content=raw, headers=ndjson)
    assert unsigned.status_code == 401
    # The edge takes NDJSON on this path only, and nothing but JSON or NDJSON.
    as_text = await client.post(BATCH, content=raw, headers={"Content-Type": "text/plain"})
    assert as_text.status_code == 415


async def test_a_duplicate_line_in_one_batch_is_replayed_and_a_blank_line_skipped(
    client: Client, demo: Demo
) -> None:
    till = await new_till(client, demo)
    one = json.dumps(receipt_body(till)).encode()
    response = await send(till, one + b"\n\n" + one)
    results = response.json()
    assert [(r["line"], r["status"]) for r in results] == [(1, "created"), (3, "replayed")]
    assert results[0]["receipt_id"] == results[1]["receipt_id"]


async def test_a_batch_is_bounded_in_lines_and_line_size(
    settings: Settings, demo: Demo, services: Any
) -> None:
    # Spooled to a file past 1,000 bytes, taken two lines per transaction.
    bounded = msgspec.structs.replace(
        settings,
        pos_batch_max_lines=3,
        pos_batch_line_max_bytes=2000,
        pos_batch_spool_memory_bytes=1000,
        pos_batch_chunk_lines=2,
        pos_batch_max_bytes=20_000,
    )
    async with app_client(bounded, RecordingNotifier()) as small:
        created = await small.app.state.services.pos_integrations.create(
            IntegrationIn(location_id=demo.locations["station"])
        )
        till = SignedTill(
            small, str(created.integration_id), created.key_id, created.secret,
            demo.locations["station"],
        )  # fmt: skip
        good = json.dumps(receipt_body(till)).encode()
        huge = json.dumps(
            receipt_body(till, *[{"name": "Y" * 150, "unit_price_minor": 1}] * 20)
        ).encode()
        answer = await send(till, b"\n".join([good, huge, good]))
        assert answer.status_code == 200, answer.text
        assert [(r["line"], r["status"]) for r in answer.json()] == [
            (1, "created"), (2, "refused"), (3, "replayed"),
        ]  # fmt: skip
        assert slug_of(answer.json()[1]) == "line-too-long"
        too_long = await send(till, b"\n".join([good] * 4))
        assert too_long.status_code == 413 and slug(too_long) == "batch-too-long"
        # Refused at the edge by its length; a chunked body is counted as it streams.
        too_big = await send(till, b" " * 25_000)
        assert too_big.status_code == 413
        streamed = await till.client.post(
            BATCH,
            content=chunks(b" " * 25_000),
            headers={**till.signed_headers(b" " * 25_000), "Content-Type": "application/x-ndjson"},
        )
        assert streamed.status_code == 413


async def test_a_chunk_taken_together_answers_as_receipts_taken_one_by_one(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    # One chunk: a sale sent alone before (replayed), another body under that sale's id
    # (409), fresh anonymous sales, one naming a guest, and a price PostgreSQL cannot store
    # (which makes the chunk fall back to one receipt at a time, refusing only that line).
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    sent = receipt_body(till)
    alone = await till.client.post(
        "/v1/pos/receipts", content=json.dumps(sent).encode(),
        headers=till.signed_headers(json.dumps(sent).encode()),
    )  # fmt: skip
    assert alone.status_code == 201, alone.text
    other = {**receipt_body(till), "external_id": sent["external_id"]}
    other["lines"] = [{"name": "Latte", "unit_price_minor": 420}]
    fresh = [receipt_body(till) for _ in range(3)]
    named = receipt_body(till, guest={"phone": guest.phone})
    too_dear = receipt_body(till, {"name": "Gold bar", "unit_price_minor": 2**63})
    bodies = [sent, other, *fresh, named]
    raw = b"\n".join(json.dumps(b).encode() for b in bodies) + b"\n"

    results = (await send(till, raw)).json()
    assert [r["status"] for r in results] == [
        "replayed", "refused", "created", "created", "created", "created",
    ]  # fmt: skip
    assert results[0]["receipt_id"] == alone.json()["receipt_id"]
    assert slug_of(results[1]) == "receipt-conflict"
    # What the chunk stored for a fresh anonymous sale is what a till's resend gets back.
    resend = json.dumps(fresh[0]).encode()
    again = await till.client.post(
        "/v1/pos/receipts", content=resend, headers=till.signed_headers(resend)
    )
    assert again.json()["receipt_id"] == results[2]["receipt_id"]
    assert again.json()["claim_code"] and again.json()["points_earned"] == 0
    claims = await services.db.fetchval(
        "SELECT count(*) FROM receipt_claims WHERE receipt_id = ANY($1::uuid[])",
        [r["receipt_id"] for r in results[2:5]],
    )
    assert claims == 3
    assert (
        results[5]["receipt_id"]
        and await services.db.fetchval(
            "SELECT guest_id FROM receipts WHERE id = $1", results[5]["receipt_id"]
        )
        == guest.id
    )

    with_bad = b"\n".join(
        json.dumps(b).encode() for b in [*fresh[:1], too_dear, receipt_body(till)]
    )
    mixed = (await send(till, with_bad + b"\n")).json()
    assert [r["status"] for r in mixed] == ["replayed", "refused", "created"]
    assert await landed(services, [too_dear["external_id"]]) == 0
    await assert_books_balance(services, demo.brand_id)
