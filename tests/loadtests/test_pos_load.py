"""The POS half of the load suite: the till's receipt stream has the shape the issue asks for
and every body is a valid receipt; the SLO gate judges receipt intake p99."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path

import msgspec

from loadtests import slo
from loadtests.common import Guest
from loadtests.pos_receipts import TillStream
from shared import qr
from shared.pos import ReceiptIn

NOW = 1_764_900_000.0
GUESTS = [
    Guest(
        id="g1",
        token="t",
        phone="+4915200000001",
        public_id=qr.new_public_id(),
        qr_secret_hex=qr.new_secret().hex(),
    ),
    Guest(id="g2", token="t", phone="+4915200000002"),
]


def test_till_stream_has_the_realistic_shape() -> None:
    stream = TillStream(
        "00000000-0000-4000-8000-00000000000a", GUESTS, random.Random(7), clock=lambda: NOW
    )
    sent = [stream.next() for _ in range(3000)]
    kinds = {k: sum(1 for s in sent if s.kind == k) for k in ("sale", "late", "refund", "replay")}
    receipts = [msgspec.json.decode(s.body, type=ReceiptIn) for s in sent]  # all valid
    sales = [r for s, r in zip(sent, receipts, strict=True) if s.kind in ("sale", "late")]

    assert all(1 <= len(r.lines) <= 4 for r in sales)
    with_guest = sum(1 for r in sales if r.guest is not None) / len(sales)
    assert 0.28 < with_guest < 0.39
    assert 40 < kinds["refund"] < 150 and 20 < kinds["replay"] < 110 and 40 < kinds["late"] < 150
    for s, r in zip(sent, receipts, strict=True):
        age_s = NOW - r.occurred_at.timestamp()
        if s.kind == "late":
            assert 3600 <= age_s <= 3 * 3600
        elif s.kind != "replay":  # a replay repeats an earlier body, late or not
            assert age_s < 1
        assert r.payments[0].amount_minor == sum(
            round(line.quantity * line.unit_price_minor) - line.discount_minor for line in r.lines
        )
        if r.guest is not None and r.guest.qr_code:
            # The QR was valid when the (possibly offline) till scanned it.
            assert r.guest.scanned_at == r.occurred_at
            assert qr.parse(r.guest.qr_code).public_id == GUESTS[0].public_id

    first_seen = {}
    for s, r in zip(sent, receipts, strict=True):
        if s.kind == "replay":
            assert first_seen[r.external_id] == s.body  # the very same bytes again
        else:
            assert r.external_id not in first_seen  # a new id for every new receipt
            first_seen[r.external_id] = s.body
    refunded = [r.refund_of for r in receipts if r.refund_of]
    assert len(refunded) == len(set(refunded)) == kinds["refund"]  # never refunded twice
    assert set(refunded) <= {r.external_id for r in sales}


def _stats(tmp_path: Path, pos_p99: int | None) -> Path:
    stats = tmp_path / "run_stats.csv"
    rows = [
        "Type,Name,Request Count,Failure Count,50%,95%,99%",
        "POST,POST /v1/orders,1000,0,20,60,90",
    ]
    if pos_p99 is not None:
        rows.append(f"POST,POST /v1/pos/receipts,500,0,30,90,{pos_p99}")
    rows.append(",Aggregated,1500,0,10,50,120")
    stats.write_text("\n".join(rows) + "\n")
    return stats


def test_slo_gate_judges_receipt_intake_p99(tmp_path: Path) -> None:
    assert slo.main([str(_stats(tmp_path, 150))]) == 0
    assert slo.main([str(_stats(tmp_path, 260))]) == 1  # over the 200 ms default
    assert slo.main([str(_stats(tmp_path, 260)), "--pos-p99-ms", "300"]) == 0
    verdict = slo.judge(*slo.rows_from_csv(_stats(tmp_path, None)), slo.Thresholds())
    assert verdict.passed
    assert any(line.startswith("SKIP POS") for line in verdict.lines)
    assert json.loads(verdict.to_json())["pos"] is None


def test_occurred_at_is_an_offset_time() -> None:
    stream = TillStream("00000000-0000-4000-8000-00000000000a", [], random.Random(1))
    body = json.loads(stream.next().body)
    assert datetime.fromisoformat(body["occurred_at"]).utcoffset() is not None
