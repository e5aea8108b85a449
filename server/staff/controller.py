"""Staff sign-in (password or PIN on a paired kiosk) and kiosk device registration."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from server.infra.identity import Principal, requires_role
from server.infra.openapi import BEARER, problems
from server.staff.service import Staff
from shared import contract
from shared.contract import DeviceCreated, DeviceIn, DevicePaired, PairIn

__all__ = ["DevicesController", "StaffAuthController"]


class StaffAuthController(Controller):
    path = "/v1/auth"
    tags = ["auth"]

    @post("/staff", status_code=200, responses=problems(401, 403, 423, 429))
    async def sign_in(
        self,
        staff: NamedDependency[Staff],
        data: JSONBody[contract.StaffLogin],
        client_ip: NamedDependency[str],
    ) -> contract.TokenPair:
        """Email and password (plus a TOTP code for managers and admins); failures are slowed
        per client address, and lock the email (the second factor gets through the lock)."""
        return await staff.sign_in(data, client_ip)

    @post("/pin", status_code=200, responses=problems(401, 403, 423, 429))
    async def pin(
        self, staff: NamedDependency[Staff], data: JSONBody[contract.PinLogin]
    ) -> contract.TokenPair:
        """PIN sign-in on a paired kiosk: the token is scoped to the device's location."""
        return await staff.pin_sign_in(data)


class DevicesController(Controller):
    path = "/v1/kiosk/devices"
    tags = ["kiosk"]

    @post(
        "/",
        guards=[requires_role("manager")],
        security=BEARER,
        status_code=201,
        responses=problems(404),
    )
    async def create(
        self,
        staff: NamedDependency[Staff],
        principal: NamedDependency[Principal],
        data: JSONBody[DeviceIn],
    ) -> DeviceCreated:
        """Register a kiosk tablet at a location; answers a pairing code shown only once."""
        return await staff.create_device(principal, data)

    @post("/pair", status_code=200, responses=problems(404, 429))
    async def pair(
        self, staff: NamedDependency[Staff], data: JSONBody[PairIn], client_ip: NamedDependency[str]
    ) -> DevicePaired:
        """The tablet trades its pairing code (single use, expiring) for a device secret;
        unknown codes are rate-limited per client address."""
        return await staff.pair(data, client_ip)
