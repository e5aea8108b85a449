from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from server.auth.service import Auth
from server.infra.identity import Principal, requires_authenticated
from server.infra.openapi import problems
from shared import contract

__all__ = ["AuthController"]


class AuthController(Controller):
    path = "/v1/auth"
    tags = ["auth"]

    @post("/otp", status_code=202, responses=problems(429))
    async def send_code(
        self,
        auth: NamedDependency[Auth],
        data: JSONBody[contract.OtpRequest],
        client_ip: NamedDependency[str],
    ) -> contract.OtpSent:
        """Send a one-time code to a phone (rate-limited per phone, client address and brand)."""
        return await auth.send_code(data, client_ip)

    @post("/otp/verify", status_code=200, responses=problems(401, 429))
    async def verify_code(
        self,
        auth: NamedDependency[Auth],
        data: JSONBody[contract.OtpVerify],
        client_ip: NamedDependency[str],
    ) -> contract.TokenPair:
        """Exchange the code for an access token and a refresh token; new guests are enrolled."""
        return await auth.verify_code(data, client_ip)

    @post("/refresh", status_code=200, responses=problems(401))
    async def refresh(
        self, auth: NamedDependency[Auth], data: JSONBody[contract.RefreshIn]
    ) -> contract.TokenPair:
        """Rotate a refresh token; reusing an old one signs out its whole family."""
        return await auth.refresh(data)

    @post(
        "/signout", status_code=204, guards=[requires_authenticated], responses=problems(401, 409)
    )
    async def sign_out(
        self, auth: NamedDependency[Auth], principal: NamedDependency[Principal]
    ) -> None:
        """End the caller's session (guest or staff): its refresh and access tokens stop
        working at once."""
        await auth.sign_out(principal)
