"""Import files of past receipts (``regulars import receipts``), parsed as a stream. Pure: no
I/O of its own; the caller hands in the file's lines.

Two formats, told apart by the first non-blank character: NDJSON of our receipts (DESIGN
§10), one per line; or CSV with one row per receipt line, the rows of one ``external_id``
forming one receipt. CSV columns (ours; ``--map OURS=THEIRS,…`` names the file's own):
``external_id``, ``occurred_at`` (or ``date`` and ``time``), ``name`` required; ``sku``,
``category``, ``quantity`` (default 1), ``unit_price`` (decimal, major units) or
``unit_price_minor``, ``discount`` (major units), ``tender``, ``guest_phone``,
``guest_card`` optional. A time without a UTC offset is the location's local time.

Every refusal names its line (1-based, the header is line 1); a refused line refuses its
receipt, and the rest of the file proceeds.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import cast, get_args
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from server.pos.vendors.money import exponent
from shared.pos import ReceiptGuest, ReceiptIn, ReceiptLineIn, ReceiptPaymentIn, Tender

__all__ = [
    "COLUMNS",
    "ImportFileError",
    "ImportedReceipt",
    "RefusedLine",
    "parse_column_map",
    "parse_import",
]

COLUMNS = (
    "external_id",
    "occurred_at",
    "date",
    "time",
    "sku",
    "name",
    "category",
    "quantity",
    "unit_price",
    "unit_price_minor",
    "discount",
    "tender",
    "guest_phone",
    "guest_card",
)
_TENDERS = frozenset(get_args(Tender))


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (a missing column, a bad ``--map``)."""


class ImportedReceipt(msgspec.Struct, frozen=True, kw_only=True):
    line: int  # where the receipt starts in the file
    receipt: ReceiptIn


class RefusedLine(msgspec.Struct, frozen=True, kw_only=True):
    line: int
    detail: str


class _LineError(ValueError):
    pass


def parse_column_map(text: str | None) -> dict[str, str]:
    """``"external_id=TransactionNo,name=Item"`` → ``{"external_id": "TransactionNo", …}``;
    refuses names that are not our columns and one of ours mapped twice."""
    mapping: dict[str, str] = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        ours, sep, theirs = pair.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or not ours or not theirs:
            raise ImportFileError(f"--map expects OURS=THEIRS pairs, got {pair.strip()!r}")
        if ours not in COLUMNS:
            raise ImportFileError(f"--map: {ours!r} is not one of our columns {COLUMNS}")
        if ours in mapping:
            raise ImportFileError(f"--map: {ours!r} is mapped twice")
        mapping[ours] = theirs
    return mapping


def parse_import(
    lines: Iterable[str],
    *,
    location_id: UUID,
    timezone: str,
    currency: str,
    column_map: Mapping[str, str] | None = None,
) -> Iterator[ImportedReceipt | RefusedLine]:
    """Receipts and refusals in file order, read one line at a time (never the whole file).

    ``timezone`` is the location's zoneinfo name, for times without an offset; ``currency``
    gives the exponent of decimal prices. Raises :class:`ImportFileError` only for what
    stops the whole file.
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ImportFileError(f"{timezone!r} is not a time zone") from None
    stream = iter(lines)
    skipped = 0
    for first in stream:
        if first.strip():
            break
        skipped += 1
    else:
        return
    rest = _chain(first, stream)
    if first.lstrip().startswith("{"):
        yield from _ndjson(rest, skipped, location_id)
    else:
        places = exponent(currency)
        yield from _csv(rest, skipped, location_id, zone, places, dict(column_map or {}))


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


# -- NDJSON ------------------------------------------------------------------------------

# A line as JSON values, numbers with a fraction as Decimal (a price is never a float); the
# receipt is checked against its type afterwards, once its location is filled in.
_json_line = msgspec.json.Decoder(float_hook=Decimal).decode


def _ndjson(
    lines: Iterable[str], skipped: int, location_id: UUID
) -> Iterator[ImportedReceipt | RefusedLine]:
    for number, text in enumerate(lines, start=skipped + 1):
        if not text.strip():
            continue
        try:
            raw = _json_line(text)
            if not isinstance(raw, dict):
                raise _LineError("a line must be one JSON object (a receipt)")
            raw.setdefault("location_id", str(location_id))
            receipt = msgspec.convert(raw, ReceiptIn, strict=False)
            if receipt.location_id != location_id:
                raise _LineError(f"location_id {receipt.location_id} is not {location_id}")
        except (ValueError, RecursionError, msgspec.ValidationError) as exc:
            yield RefusedLine(line=number, detail=str(exc))
            continue
        yield ImportedReceipt(line=number, receipt=receipt)


# -- CSV ---------------------------------------------------------------------------------


class _Pending:
    """The rows of the receipt being assembled."""

    def __init__(self, external_id: str, line: int, row: dict[str, str]) -> None:
        self.external_id = external_id
        self.line = line
        self.first = row
        self.lines: list[ReceiptLineIn] = []
        self.paid: dict[Tender, int] = {}
        self.errors: list[RefusedLine] = []


def _csv(
    lines: Iterable[str],
    skipped: int,
    location_id: UUID,
    zone: ZoneInfo,
    places: int,
    column_map: dict[str, str],
) -> Iterator[ImportedReceipt | RefusedLine]:
    reader = csv.reader(lines)
    header = next(reader)
    index = _columns(header, column_map)
    seen: dict[str, int] = {}  # external_id -> the line its receipt started at
    pending: _Pending | None = None
    for fields in reader:
        number = reader.line_num + skipped
        if not any(cell.strip() for cell in fields):
            continue
        row = {ours: fields[i].strip() if i < len(fields) else "" for ours, i in index.items()}
        external_id = row.get("external_id", "")
        if pending is not None and external_id != pending.external_id:
            yield from _finish(pending, location_id, zone)
            pending = None
        if pending is None:
            if external_id in seen:
                # Merging would mean holding the whole file; a sorted file never gets here.
                yield RefusedLine(
                    line=number,
                    detail=f"external_id {external_id!r} continues the receipt of line "
                    f"{seen[external_id]} after other receipts: group its rows together",
                )
                continue
            pending = _Pending(external_id, number, row)
            if external_id:
                seen[external_id] = number
        try:
            line, tender, paid = _line(row, places)
        except _LineError as exc:
            pending.errors.append(RefusedLine(line=number, detail=str(exc)))
            continue
        pending.lines.append(line)
        if tender is not None:
            pending.paid[tender] = pending.paid.get(tender, 0) + paid
    if pending is not None:
        yield from _finish(pending, location_id, zone)


def _columns(header: list[str], column_map: dict[str, str]) -> dict[str, int]:
    """Our column name → its index in the file, after ``--map``."""
    positions = {name.strip(): i for i, name in enumerate(header)}
    index: dict[str, int] = {}
    for ours in COLUMNS:
        theirs = column_map.get(ours, ours)
        if theirs in positions:
            index[ours] = positions[theirs]
        elif ours in column_map:
            raise ImportFileError(f"--map {ours}={theirs}: the file has no column {theirs!r}")
    missing = [c for c in ("external_id", "name") if c not in index]
    if "occurred_at" not in index and not {"date", "time"} <= index.keys():
        missing.append("occurred_at (or date and time)")
    if missing:
        raise ImportFileError(f"the file has no column {', '.join(missing)}")
    return index


def _line(row: dict[str, str], places: int) -> tuple[ReceiptLineIn, Tender | None, int]:
    """One CSV row as a receipt line, its tender and the money it paid (minor units)."""
    if not row.get("name"):
        raise _LineError("name is required")
    quantity = _decimal(row.get("quantity") or "1", "quantity")
    if quantity <= 0:
        raise _LineError(f"quantity must be positive, got {row['quantity']!r}")
    unit = _unit_price(row, places)
    discount = _minor(row["discount"], places, "discount") if row.get("discount") else 0
    named = (row.get("tender") or "").lower() or None
    if named is not None and named not in _TENDERS:
        raise _LineError(f"tender {row['tender']!r} is not one of {sorted(_TENDERS)}")
    tender = cast("Tender | None", named)  # a string: the union is not built per row
    line = ReceiptLineIn(
        name=row["name"],
        quantity=quantity,
        unit_price_minor=unit,
        discount_minor=discount,
        sku=row.get("sku") or None,
        category=row.get("category") or None,
    )
    paid = max(0, int((quantity * unit).to_integral_value()) - discount)
    return line, tender, paid


def _unit_price(row: dict[str, str], places: int) -> int:
    minor = row.get("unit_price_minor")
    major = row.get("unit_price")
    from_minor = None
    if minor:
        try:
            from_minor = int(minor)
        except ValueError:
            raise _LineError(f"unit_price_minor {minor!r} is not a whole number") from None
    from_major = _minor(major, places, "unit_price") if major else None
    if from_minor is not None and from_major is not None and from_minor != from_major:
        raise _LineError(f"unit_price {major} and unit_price_minor {minor} disagree")
    value = from_minor if from_minor is not None else from_major
    if value is not None and value < 0:
        raise _LineError("a unit price cannot be negative")
    return value or 0


def _decimal(text: str, column: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise _LineError(f"{column} {text!r} is not a number") from None
    if not value.is_finite():
        raise _LineError(f"{column} {text!r} is not a number")
    return value


def _minor(text: str, places: int, column: str) -> int:
    """A decimal in major units as minor units, exactly: more decimals than the currency has
    is refused rather than rounded (a file is not a float)."""
    scaled = _decimal(text, column).scaleb(places)
    if scaled != scaled.to_integral_value():
        raise _LineError(f"{column} {text!r} has more decimals than the currency ({places})")
    if scaled < 0:
        raise _LineError(f"{column} cannot be negative")
    return int(scaled)


def _finish(
    pending: _Pending, location_id: UUID, zone: ZoneInfo
) -> Iterator[ImportedReceipt | RefusedLine]:
    if not pending.external_id:
        pending.errors.insert(0, RefusedLine(line=pending.line, detail="external_id is required"))
    if pending.errors:
        yield from pending.errors
        return
    try:
        receipt = msgspec.convert(
            msgspec.to_builtins(
                ReceiptIn(
                    external_id=pending.external_id,
                    location_id=location_id,
                    occurred_at=_when(pending.first, zone),
                    lines=pending.lines,
                    payments=[
                        ReceiptPaymentIn(tender=tender, amount_minor=amount)
                        for tender, amount in pending.paid.items()
                    ],
                    guest=_guest(pending.first),
                )
            ),
            ReceiptIn,
        )
    except (_LineError, msgspec.ValidationError) as exc:
        yield RefusedLine(line=pending.line, detail=str(exc))
        return
    yield ImportedReceipt(line=pending.line, receipt=receipt)


def _when(row: dict[str, str], zone: ZoneInfo) -> datetime:
    """The receipt's time: ``occurred_at``, or ``date`` and ``time``; local when naive."""
    try:
        if row.get("occurred_at"):
            moment = datetime.fromisoformat(row["occurred_at"].replace("Z", "+00:00"))
        elif row.get("date") and row.get("time"):
            moment = datetime.combine(
                date.fromisoformat(row["date"]), time.fromisoformat(row["time"])
            )
        else:
            raise _LineError("a time is required: occurred_at, or date and time")
    except ValueError as exc:
        if isinstance(exc, _LineError):
            raise
        raise _LineError(f"the time is not ISO 8601: {exc}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def _guest(row: dict[str, str]) -> ReceiptGuest | None:
    phone, card = row.get("guest_phone") or None, row.get("guest_card") or None
    return ReceiptGuest(phone=phone, card_number=card) if phone or card else None
