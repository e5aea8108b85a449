"""Exact money for the vendor adapters: Decimal only, in the currency's own exponent.

A float never touches an amount: bodies are decoded with ``parse_float=Decimal``, so "34.48"
stays 34.48 and not 34.479999999999997. Amounts in major units become integer minor units by
the ISO 4217 exponent of their currency (JPY 0, USD 2, KWD 3).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import msgspec

from shared.pos import ReceiptIn

__all__ = [
    "VendorPayloadError",
    "checked",
    "decode",
    "exponent",
    "field",
    "major_to_minor",
    "quantity_of",
    "spread",
]

# ISO 4217 currencies whose minor unit is not 1/100; every other code has two decimals.
_EXPONENTS = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}


class VendorPayloadError(ValueError):
    """The vendor's object cannot be read as a receipt (malformed or unsupported); the message
    says which field and why. The endpoint answers it with a 422 problem."""


def decode(body: bytes) -> Any:
    """Parse a JSON body with every non-integer number as a Decimal (never a float)."""
    try:
        return json.loads(body, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        raise VendorPayloadError(f"the body is not valid JSON: {exc}") from None


def exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit (ISO 4217)."""
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise VendorPayloadError(f"{currency!r} is not an ISO 4217 currency code")
    return _EXPONENTS.get(currency, 2)


def _decimal(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise VendorPayloadError(f"{where}: expected a number, got {value!r}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise VendorPayloadError(f"{where}: {value!r} is not a number") from None
    if not number.is_finite():
        raise VendorPayloadError(f"{where}: {value!r} is not a finite number")
    return number


def major_to_minor(value: object, currency: str, where: str) -> int:
    """An amount in major units (34.48 USD) as integer minor units (3448). Tills round to the
    currency's minor unit themselves; digits beyond it can only be a float printed by the
    vendor (0.30000000000000004), so they are rounded half up."""
    scaled = _decimal(value, where).scaleb(exponent(currency))
    return int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def quantity_of(value: object, where: str) -> Decimal:
    """A line quantity (Square sends strings like "1.5", Loyverse numbers); must be > 0."""
    quantity = _decimal(value, where)
    if quantity <= 0:
        raise VendorPayloadError(f"{where}: a quantity must be positive, got {value!r}")
    return quantity


def spread(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` minor units over lines in proportion to ``weights`` so the parts sum to
    ``total`` exactly (largest remainder; ties go to the earlier line). All-zero weights split
    evenly."""
    if total == 0 or not weights:
        return [0] * len(weights)
    basis = list(weights) if any(weights) else [1] * len(weights)
    whole = sum(basis)
    parts = [total * w // whole for w in basis]
    order = sorted(range(len(basis)), key=lambda i: (-(total * basis[i] % whole), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def field(obj: Mapping[str, Any], name: str, where: str) -> Any:
    """A required field of a vendor object, or a clear error naming where it was missing."""
    if not isinstance(obj, Mapping):
        raise VendorPayloadError(f"{where}: expected an object")
    value = obj.get(name)
    if value is None:
        raise VendorPayloadError(f"{where}.{name} is required")
    return value


def checked(receipt: ReceiptIn) -> ReceiptIn:
    """The receipt, validated against the contract's bounds as if a till had sent it (a
    Struct's constructor checks types only, not lengths and ranges)."""
    try:
        return msgspec.convert(msgspec.to_builtins(receipt), ReceiptIn)
    except msgspec.ValidationError as exc:
        raise VendorPayloadError(f"the payload does not fit a receipt: {exc}") from None
