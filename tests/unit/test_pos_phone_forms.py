"""The E.164 forms a batch remembers for the phone numbers its receipts name."""

from __future__ import annotations

from server.pos.identify import PhoneForms


def test_phone_forms_normalise_remember_and_stay_bounded() -> None:
    forms = PhoneForms(size=2)
    assert forms.e164("0151 2345 6789") == "+4915123456789"  # the German default region
    assert forms.e164("+49 151 23456789") == "+4915123456789"
    assert forms.e164("not a phone") is None
    # A third number past the bound starts afresh rather than growing: still right.
    assert len(forms._known) <= 2
    assert forms.e164("0151 2345 6789") == "+4915123456789"
