"""The client-side till signature (shared/pos_signing.py) is DESIGN §10's scheme."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from shared.pos_signing import Signer, signature, signed_headers


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"external_id":"T-1"}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("s3cret", 1_700_000_000, body) == f"t=1700000000,v1={expected}"


def test_headers_name_the_key_and_change_with_body_time_and_secret() -> None:
    body = b"{}"
    headers = signed_headers("key_1", "s3cret", body, now_s=1_700_000_000.9)
    assert headers["X-Regulars-Key"] == "key_1"
    assert headers["X-Regulars-Signature"].startswith("t=1700000000,v1=")
    others = {
        signed_headers("key_1", "s3cret", b"{ }", now_s=1_700_000_000)["X-Regulars-Signature"],
        signed_headers("key_1", "other", body, now_s=1_700_000_000)["X-Regulars-Signature"],
        signed_headers("key_1", "s3cret", body, now_s=1_700_000_001)["X-Regulars-Signature"],
    }
    assert headers["X-Regulars-Signature"] not in others and len(others) == 3


def test_signer_never_signs_one_body_twice_in_one_second() -> None:
    now = [1_700_000_000.2]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    signer = Signer("key_1", "s3cret", clock=lambda: now[0], sleep=sleep)
    first = signer.headers(b"{}")["X-Regulars-Signature"]
    other = signer.headers(b"[]")["X-Regulars-Signature"]  # another body: no wait
    again = signer.headers(b"{}")["X-Regulars-Signature"]  # the same body: next second
    assert first.startswith("t=1700000000,") and other.startswith("t=1700000000,")
    assert again.startswith("t=1700000001,")
    assert slept == [pytest.approx(0.8)]
