from __future__ import annotations

import pytest

from shared import qr

SECRET = b"0123456789abcdef0123"
PUBLIC_ID = "ABCDEFGHIJKLMNOP"
NOW = 1_790_000_000.0


def test_a_fresh_code_verifies_and_uses_qr_alphanumerics() -> None:
    code = qr.generate(PUBLIC_ID, SECRET, NOW)
    assert set(code) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
    qr.verify(qr.parse(code), SECRET, NOW)
    qr.verify(qr.parse(code.lower()), SECRET, NOW + 4 * 60)  # scanners may lower-case


@pytest.mark.parametrize(
    ("code", "secret", "now", "reason"),
    [
        (qr.generate(PUBLIC_ID, SECRET, NOW), SECRET, NOW + 5 * 60, "expired"),
        (qr.generate(PUBLIC_ID, SECRET, NOW + 180), SECRET, NOW, "expired"),
        (qr.generate(PUBLIC_ID, SECRET, NOW), b"another secret......", NOW, "forged"),
        (qr.generate(PUBLIC_ID, SECRET, NOW)[:-1] + "A", SECRET, NOW, "forged"),
    ],
)
def test_bad_codes_are_refused_with_a_reason(
    code: str, secret: bytes, now: float, reason: str
) -> None:
    with pytest.raises(qr.QrError) as refused:
        qr.verify(qr.parse(code), secret, now)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    "garbage", ["", "hello", "RG1:abc:1:2", "RG2:ABCDEFGHIJKLMNOP:1:ABCDEFGHIJ", "x" * 500]
)
def test_garbage_is_malformed(garbage: str) -> None:
    with pytest.raises(qr.QrError) as refused:
        qr.parse(garbage)
    assert refused.value.reason == "malformed"


def test_valid_until_is_the_end_of_the_window() -> None:
    code = qr.generate(PUBLIC_ID, SECRET, NOW)
    assert qr.valid_until(code) == (int(NOW) // 60 + 5) * 60
