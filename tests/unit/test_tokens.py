"""Access tokens: verification, and the cache of verified tokens that must never widen it."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from server.auth.tokens import TokenIssuer
from server.infra.identity import Principal, TokenError

GUEST = Principal(kind="guest", subject_id=uuid.uuid4(), brand_id=uuid.uuid4())


def test_a_verified_token_gives_its_principal_again() -> None:
    issuer = TokenIssuer("s" * 40, "regulars", 900)
    token = issuer.issue(GUEST)
    assert issuer.verify(token) == GUEST
    assert issuer.verify(token) == GUEST


def test_a_remembered_token_still_expires() -> None:
    issuer = TokenIssuer("s" * 40, "regulars", 2)
    token = issuer.issue(GUEST)  # valid for 1 to 2 more seconds (exp is whole seconds)
    assert issuer.verify(token) == GUEST
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires_at - time.time()) + 0.05)
    with pytest.raises(TokenError, match="expired"):
        issuer.verify(token)


def test_a_forged_or_foreign_token_is_refused_even_beside_a_remembered_one() -> None:
    issuer = TokenIssuer("s" * 40, "regulars", 900)
    token = issuer.issue(GUEST)
    issuer.verify(token)
    head, body, signature = token.split(".")
    forged = f"{head}.{body}.{signature[:-4]}AAAA"
    with pytest.raises(TokenError):
        issuer.verify(forged)
    foreign = TokenIssuer("t" * 40, "regulars", 900).issue(GUEST)
    with pytest.raises(TokenError):
        issuer.verify(foreign)


def test_the_cache_of_verified_tokens_is_bounded() -> None:
    issuer = TokenIssuer("s" * 40, "regulars", 900, verified_cache_size=2)
    issued = [
        issuer.issue(Principal(kind="guest", subject_id=uuid.uuid4(), brand_id=uuid.uuid4()))
        for _ in range(5)
    ]
    for token in issued:
        issuer.verify(token)
    assert len(issuer._verified) == 2
    assert all(issuer.verify(token).kind == "guest" for token in issued)


def test_after_a_rotation_tokens_of_the_previous_secret_still_verify() -> None:
    old, new, stranger = "o" * 40, "n" * 40, "x" * 40
    before = TokenIssuer(old, "regulars", 900).issue(GUEST)
    rotated = TokenIssuer(new, "regulars", 900, previous_secrets=(stranger, old))
    assert rotated.verify(before) == GUEST
    # New tokens are signed with the new secret only: a server that has dropped the old
    # secret accepts them, one that never had the new one does not.
    after = rotated.issue(GUEST)
    assert TokenIssuer(new, "regulars", 900).verify(after) == GUEST
    with pytest.raises(TokenError):
        TokenIssuer(old, "regulars", 900).verify(after)


def test_a_token_of_a_secret_neither_current_nor_previous_is_refused() -> None:
    token = TokenIssuer("x" * 40, "regulars", 900).issue(GUEST)
    with pytest.raises(TokenError, match="not valid"):
        TokenIssuer("n" * 40, "regulars", 900, previous_secrets=("o" * 40,)).verify(token)
