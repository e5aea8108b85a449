"""Access tokens: short-lived HS256 JWTs that say who is calling and what they may touch."""

from __future__ import annotations

import contextlib
import time
from typing import Any
from uuid import UUID

import jwt

from server.infra.identity import Principal, TokenError

__all__ = ["Principal", "TokenError", "TokenIssuer"]


class TokenIssuer:
    def __init__(
        self,
        secret: str,
        issuer: str,
        access_ttl_s: int,
        verified_cache_size: int = 10_000,
        previous_secrets: tuple[str, ...] = (),
    ) -> None:
        """Tokens are signed with ``secret`` and verified with it or, after a rotation, with
        one of ``previous_secrets`` (until they expire, one access lifetime)."""
        self._secret = secret
        self._previous = previous_secrets
        self._issuer = issuer
        self.access_ttl_s = access_ttl_s
        # A guest sends the same token with every request for its lifetime, and PyJWT's decode
        # was ~15 % of a checkout's CPU (issue 5). A token whose signature and claims checked
        # out once maps to its principal until it expires; an unknown token is verified in
        # full. Bounded: when full, the oldest entry goes.
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._verified_cache_size = verified_cache_size

    def issue(self, principal: Principal, now_s: float | None = None) -> str:
        now = int(time.time() if now_s is None else now_s)
        claims: dict[str, object] = {
            "iss": self._issuer,
            "sub": str(principal.subject_id),
            "knd": principal.kind,
            "brd": str(principal.brand_id),
            "iat": now,
            "exp": now + self.access_ttl_s,
        }
        if principal.family_id is not None:
            claims["fam"] = str(principal.family_id)
        if principal.kind == "staff":
            claims["rol"] = principal.role
            claims["loc"] = sorted(str(x) for x in principal.location_ids)
            if principal.device_id:
                claims["dev"] = str(principal.device_id)
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; TokenError for an expired, forged or malformed one."""
        known = self._verified.get(token)
        if known is not None and time.time() < known[1]:
            return known[0]
        principal, expires_at = self._decode(token)
        if len(self._verified) >= self._verified_cache_size:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (principal, expires_at)
        return principal

    def expires_at(self, token: str) -> float:
        """When a token that ``verify`` accepts stops being valid, in Unix seconds."""
        known = self._verified.get(token)
        return known[1] if known is not None else self._decode(token)[1]

    def _claims(self, token: str) -> dict[str, Any]:
        """The token's claims, checked with the current secret, then the previous ones."""
        try:
            return self._checked(token, self._secret)
        except jwt.InvalidSignatureError:
            for previous in self._previous:
                with contextlib.suppress(jwt.InvalidSignatureError):
                    return self._checked(token, previous)
            raise

    def _checked(self, token: str, secret: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=self._issuer,
            options={"require": ["exp", "sub", "iss"]},
        )

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            claims = self._claims(token)
            kind = claims["knd"]
            if kind not in ("guest", "staff"):
                raise TokenError("unknown principal kind")
            principal = Principal(
                kind=kind,
                subject_id=UUID(claims["sub"]),
                brand_id=UUID(claims["brd"]),
                role=claims.get("rol", "guest"),
                location_ids=frozenset(UUID(x) for x in claims.get("loc", [])),
                device_id=UUID(claims["dev"]) if claims.get("dev") else None,
                family_id=UUID(claims["fam"]) if claims.get("fam") else None,
            )
            return principal, float(claims["exp"])
        except jwt.ExpiredSignatureError:
            raise TokenError("the access token has expired; refresh it") from None
        except (jwt.PyJWTError, KeyError, ValueError) as exc:
            raise TokenError(f"the access token is not valid: {exc}") from None
