"""A batch's chunks overlap (issue 23): while one chunk is written, the next is read, priced,
claims its keys and writes its anonymous sales; its points, visits and guests' sales wait for
the chunk before to commit (server/pos/batch.py, ``Intake.take_many``'s ``after``). With
chunks of two lines, a guest's tier crossing, an ``external_id`` sent again one chunk later
and a refund right after its sale all cross chunk boundaries: each must come out as taking
the receipts one after another does."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal
from unittest import mock

import msgspec
import pytest

from server.auth.notifier import RecordingNotifier
from server.pos.auth import Till
from server.pos.integrations import IntegrationIn
from server.settings import Settings
from shared.pos import ReceiptIn
from tests.api.helpers import assert_books_balance
from tests.api.pos_support import SignedTill, new_till, points_of_receipts, receipt_body
from tests.api.test_pos_batch import send
from tests.api.test_pos_batch_guests import (
    BEANS,
    CUP,
    WELCOME,
    points_earned,
    profile,
    receipts_of,
    wallet,
    whole_profile,
)
from tests.conftest import Client, Demo, app_client, sign_in


@pytest.fixture
async def small_chunks(settings: Settings) -> AsyncIterator[tuple[Client, RecordingNotifier]]:
    notifier = RecordingNotifier()
    async with app_client(
        msgspec.structs.replace(settings, pos_batch_chunk_lines=2), notifier
    ) as client:
        yield client, notifier


async def batch_till(client: Client, demo: Demo) -> SignedTill:
    created = await client.app.state.services.pos_integrations.create(
        IntegrationIn(location_id=demo.locations["station"])
    )
    return SignedTill(
        client, str(created.integration_id), created.key_id, created.secret,
        demo.locations["station"],
    )  # fmt: skip


def ndjson(bodies: list[dict[str, Any]]) -> bytes:
    return b"\n".join(json.dumps(body).encode() for body in bodies) + b"\n"


async def test_chunks_of_two_earn_what_one_receipt_after_another_earns(
    small_chunks: tuple[Client, RecordingNotifier], demo: Demo
) -> None:
    client, notifier = small_chunks
    services = client.app.state.services
    till, alone_till = await batch_till(client, demo), await new_till(client, demo)
    a, b = await sign_in(client, notifier), await sign_in(client, notifier)
    ref_a, ref_b = await sign_in(client, notifier), await sign_in(client, notifier)
    for guest in (a, b, ref_a, ref_b):
        await services.loyalty.reload(guest.id)

    batched = receipts_of(till, a, b)  # a crosses into Silver in the fourth chunk
    results = (await send(till, ndjson(batched))).json()
    assert [r["status"] for r in results] == ["created"] * len(batched)
    for body in receipts_of(alone_till, ref_a, ref_b):
        assert (await alone_till.receipt(body)).status_code == 201

    got = await points_earned(services, till, [r["external_id"] for r in batched])
    assert got == [200, 0, 200, 15, 400, 0, 273, 30]
    for guest, ref in ((a, ref_a), (b, ref_b)):
        (pg, hot), (ref_pg, _) = await wallet(services, guest), await wallet(services, ref)
        assert pg == ref_pg
        assert hot is not None and (hot.posted, hot.pending, hot.version) == pg
        assert await whole_profile(services, guest) == await whole_profile(services, ref)
    await assert_books_balance(services, demo.brand_id)


async def test_an_id_sent_again_a_chunk_later_and_a_refund_after_its_sale(
    small_chunks: tuple[Client, RecordingNotifier], demo: Demo
) -> None:
    client, notifier = small_chunks
    services = client.app.state.services
    till = await batch_till(client, demo)
    a = await sign_in(client, notifier)
    await services.loyalty.reload(a.id)
    sale = receipt_body(till, BEANS, guest={"phone": a.phone})
    other = receipt_body(till, CUP)
    changed = {**other, "lines": [BEANS]}  # the same id, another body
    refund = receipt_body(till, BEANS, refund_of=sale["external_id"])
    bodies = [
        sale, other,  # chunk 1
        sale, receipt_body(till, CUP),  # chunk 2: an exact resend of chunk 1's sale
        changed, refund,  # chunk 3: another body under chunk 1's id; the sale refunded
        receipt_body(till, CUP, guest={"phone": a.phone}), other,  # chunk 4
    ]  # fmt: skip

    results = (await send(till, ndjson(bodies))).json()

    statuses = [r["status"] for r in results]
    assert statuses == [
        "created", "created", "replayed", "created", "refused", "created", "created", "replayed"
    ]  # fmt: skip
    assert results[2]["receipt_id"] == results[0]["receipt_id"]
    assert results[7]["receipt_id"] == results[1]["receipt_id"]
    assert results[4]["problem"]["type"].endswith("receipt-conflict")
    stored = await services.db.fetchval(
        "SELECT count(*) FROM receipts WHERE integration_id = $1::uuid", till.integration_id
    )
    assert stored == 5  # sale, other, chunk 2's cup, the refund, chunk 4's cup
    # The sale's 200 points reversed by its refund; chunk 4's cup earned 15.
    assert await points_of_receipts(services, a.id) == 15
    pg, hot = await wallet(services, a)
    assert pg[0] == WELCOME + 15
    assert hot is not None and (hot.posted, hot.pending, hot.version) == pg
    assert (await profile(services, a))[0] == 2  # two visits: the sale and chunk 4's cup
    await assert_books_balance(services, demo.brand_id)


async def test_a_refund_then_its_id_reused_in_the_next_chunk_does_not_wait_forever(
    small_chunks: tuple[Client, RecordingNotifier], demo: Demo
) -> None:
    # The refund is taken on its own after its chunk's sales, claiming its id late; the next
    # chunk names that id too. Were that chunk to claim the id before the refund did, each
    # would wait for the other (the refund on the claim, the chunk on the refund's commit).
    client, notifier = small_chunks
    services = client.app.state.services
    till = await batch_till(client, demo)
    a = await sign_in(client, notifier)
    sale = receipt_body(till, BEANS, guest={"phone": a.phone})
    refund = receipt_body(till, BEANS, refund_of=sale["external_id"])
    reused = {**receipt_body(till, CUP), "external_id": refund["external_id"]}
    bodies = [sale, refund, reused, receipt_body(till, CUP)]

    async with asyncio.timeout(30):
        results = (await send(till, ndjson(bodies))).json()

    assert [r["status"] for r in results] == ["created", "created", "refused", "created"]
    assert results[2]["problem"]["type"].endswith("receipt-conflict")
    assert await points_of_receipts(services, a.id) == 0
    await assert_books_balance(services, demo.brand_id)


async def test_a_chunk_claims_and_writes_its_anonymous_sales_before_its_turn_and_earns_after(
    settings: Settings, client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    signed = await new_till(client, demo)
    till = Till(uuid.UUID(signed.integration_id), demo.brand_id, signed.location_id, signed.key_id)
    a = await sign_in(client, notifier)
    chunks = services.batch_intake.chunks
    seen: list[str] = []
    waiting = asyncio.Event()

    class Turn(asyncio.Event):
        async def wait(self) -> Literal[True]:
            seen.append("turn")
            waiting.set()
            return await super().wait()

    earn_many, write_sales = chunks.points.earn_many, chunks._write_sales

    async def earning(*args: Any, **kwargs: Any) -> Any:
        seen.append("earn")
        return await earn_many(*args, **kwargs)

    async def writing(*args: Any, **kwargs: Any) -> Any:
        seen.append(f"write {len(args[4])}")  # (conn, till, currency, receipts, sales, …)
        return await write_sales(*args, **kwargs)

    bodies = [
        receipt_body(signed, CUP),
        receipt_body(signed, BEANS, guest={"phone": a.phone}),
    ]
    receipts = [msgspec.convert(body, ReceiptIn) for body in bodies]
    turn = Turn()
    with (
        mock.patch.object(chunks.points, "earn_many", earning),
        mock.patch.object(chunks, "_write_sales", writing),
    ):
        async with services.db.transaction() as conn:
            taking = asyncio.create_task(chunks.take_many(conn, till, receipts, turn))
            await waiting.wait()
            assert seen == ["write 1", "turn"]  # the anonymous sale, then it waits
            turn.set()
            taken = await taking
    assert seen == ["write 1", "turn", "earn", "write 1"]
    assert [t.status if t else None for t in taken] == ["created", "created"]
    assert await points_of_receipts(services, a.id) == 200
