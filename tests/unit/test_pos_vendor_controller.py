"""The vendor endpoints over HTTP with a fake intake (pos-in's real one is wired by the
integrator): the body is adapted exactly and handed on; a bad one is a 422 problem and
nothing is handed on."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import TestClient

from server.infra.problems import exception_handlers
from server.pos.vendors.controller import VendorReceiptsController
from shared.pos import ReceiptIn, ReceiptOut

DATA = Path(__file__).parent.parent / "data" / "vendors"


LOCATION = uuid.UUID(int=3)


@dataclass(frozen=True)
class FakeTill:
    integration_id: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=1))
    brand_id: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=2))
    location_id: uuid.UUID = field(default_factory=lambda: LOCATION)
    vendor_store_id: str | None = None


@dataclass
class FakeIntake:
    taken: list[ReceiptIn] = field(default_factory=list)

    async def ingest(self, integration: Any, receipt: ReceiptIn) -> ReceiptOut:
        self.taken.append(receipt)
        return ReceiptOut(receipt_id=uuid.uuid4(), points_earned=len(self.taken))

    async def currency_of(self, integration: Any) -> str:
        return "USD"


@pytest.fixture
def intake() -> FakeIntake:
    return FakeIntake()


@pytest.fixture
def http(intake: FakeIntake) -> Iterator[TestClient[Litestar]]:
    app = Litestar(
        route_handlers=[VendorReceiptsController],
        dependencies={
            "till": Provide(lambda: FakeTill(), sync_to_thread=False),
            "pos_intake": Provide(lambda: intake, sync_to_thread=False),
        },
        exception_handlers=exception_handlers,
    )
    with TestClient(app) as client:
        yield client


def test_square_order_is_adapted_and_handed_to_intake(
    http: TestClient[Litestar], intake: FakeIntake
) -> None:
    body = (DATA / "square" / "create_order_response.json").read_bytes()
    response = http.post("/v1/pos/vendors/square/receipts", content=body)
    assert response.status_code == 201, response.text
    assert response.json()["points_earned"] == 1
    [receipt] = intake.taken
    assert receipt.external_id == "CAISENgvlJ6jLWAzERDzjyHVybY"
    assert receipt.location_id == LOCATION
    assert [line.unit_price_minor for line in receipt.lines] == [1599, 2250]


def test_loyverse_envelope_answers_one_per_receipt(
    http: TestClient[Litestar], intake: FakeIntake
) -> None:
    # The published envelope carries one receipt; two show the answer is one per receipt.
    envelope = json.loads((DATA / "loyverse" / "webhook_receipts_update.json").read_bytes())
    envelope["receipts"] = [
        json.loads((DATA / "loyverse" / name).read_bytes())
        for name in ("receipt_2_7336.json", "refund.json")
    ]
    body = json.dumps(envelope).encode()
    response = http.post("/v1/pos/vendors/loyverse/receipts", content=body)
    assert response.status_code == 201, response.text
    assert [a["points_earned"] for a in response.json()] == [1, 2]
    assert [r.external_id for r in intake.taken] == ["2-7336", "1-1002"]
    single = (DATA / "loyverse" / "refund.json").read_bytes()
    assert (
        http.post("/v1/pos/vendors/loyverse/receipts", content=single).json()["points_earned"] == 3
    )


@pytest.mark.parametrize(
    ("vendor", "body"),
    [
        ("square", b"{not json"),
        ("square", b'{"order": {"line_items": [{"quantity": "x"}]}}'),
        ("loyverse", b'{"receipts": [{"receipt_number": "1-1", "line_items": []}, {}]}'),
        ("loyverse", b"[]"),
    ],
)
def test_a_bad_vendor_body_is_a_422_problem_and_nothing_is_taken(
    http: TestClient[Litestar], intake: FakeIntake, vendor: str, body: bytes
) -> None:
    response = http.post(f"/v1/pos/vendors/{vendor}/receipts", content=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/vendor-payload-invalid")
    assert intake.taken == []
