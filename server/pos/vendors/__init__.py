"""Vendor adapters: pure functions from a till vendor's object to our receipt (DESIGN §10)."""

from server.pos.vendors.money import VendorPayloadError

__all__ = ["VendorPayloadError"]
