"""Every knob of the server in one frozen Struct, read from ``REGULARS_*`` variables.

A bad value stops the process at start-up with a message that names the variable, so a typo
in a deployment manifest never becomes a surprise at the morning rush.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

__all__ = ["Settings", "SettingsError", "load_settings"]

PREFIX = "REGULARS_"


class SettingsError(Exception):
    """A ``REGULARS_*`` variable has a value the server cannot use."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Where things are.
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: str = ".regulars"
    env: Literal["dev", "prod", "test"] = "dev"
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Server processes only (`serve` and `dev` turn it on): after start-up, freeze what
    # start-up allocated so the cyclic GC never traverses it again. A full collection over
    # the app's ~90k start-up objects paused the event loop ~55 ms, enough to put a
    # checkout's p99 over its budget by itself (issue 5). Off in tests, whose one process
    # builds hundreds of apps.
    gc_freeze: bool = False
    # Server processes only, like gc_freeze: at start-up, open every pooled connection and
    # prepare the rush-hour statements on each (lifespan.HOT_STATEMENTS). A restarted
    # process otherwise paid for each connection's first use under load (a new backend's
    # cold catalog caches, asyncpg's type introspection): kiosk scans at 300/s had p99
    # 163-250 ms in their first second, 12-24 ms with this (issue 5). Off in tests.
    db_warm_up: bool = False

    # PostgreSQL pool: bounded, with timeouts on acquiring and on every statement.
    db_pool_min: int = 2
    db_pool_max: int = 10
    db_acquire_timeout_s: float = 5.0
    # Checkouts worked on at once per process; the rest wait their turn without doing any work.
    # Unbounded, an overload made every in-flight checkout hold its pooled connection for a
    # whole turn of a crowded event loop, and throughput collapsed (issue 5, docs/PERFORMANCE.md).
    # About 2-3 x db_pool_max: enough to keep every connection busy while others are in Redis.
    checkouts_in_flight: int = 24
    db_statement_timeout_ms: int = 5_000
    db_connect_timeout_s: float = 5.0

    # Redis: the hot balances are an accelerator, so calls fail fast and fall back.
    redis_pool_max: int = 50
    redis_socket_timeout_s: float = 0.25
    redis_connect_timeout_s: float = 0.25
    redis_retry_after_s: float = 2.0
    # One server or a Redis Cluster: "auto" asks the node the URL names (INFO cluster).
    redis_cluster: Literal["auto", "yes", "no"] = "auto"

    # Tokens.
    jwt_secret: str | None = None
    # Secrets that signed tokens before a rotation, comma-separated: still accepted for one
    # access-token lifetime after the switch, so nobody gets a 401 mid-rollout (deploy/README.md,
    # "Rotating secrets"). New tokens are always signed with jwt_secret.
    jwt_previous_secrets: str = ""
    jwt_issuer: str = "regulars"
    access_ttl_s: int = 900
    # Access tokens whose verification is remembered until they expire (per process).
    verified_tokens_cached: int = 10_000
    refresh_ttl_s: int = 30 * 24 * 3600

    # Guest sign-in.
    otp_ttl_s: int = 300
    otp_max_attempts: int = 5
    otp_sends_per_hour: int = 5  # per phone
    # SMS pumping (issue 21): the chain pays per message, so sends are also limited per client
    # address and per brand, under one global budget that fails closed (no Redis, no SMS).
    otp_sends_per_client_per_hour: int = 20
    otp_sends_per_brand_per_hour: int = 2_000
    otp_sends_global_per_hour: int = 5_000
    # Wrong codes from one client address, whichever phones they were for.
    otp_wrong_codes_per_client_per_hour: int = 30
    # Proxies whose X-Forwarded-For is believed (comma-separated CIDRs, e.g. "10.0.0.0/8");
    # from any other peer the header is ignored and the peer's own address is the client.
    trusted_proxies: str = ""

    # Rotating QR codes (DESIGN §5): one step is a minute, a code is valid for a few steps.
    qr_step_s: int = 60
    qr_valid_steps: int = 5

    # Orders.
    payment_window_s: int = 900
    menu_cache_ttl_s: float = 30.0
    page_size_max: int = 100
    max_lines_per_order: int = 50
    max_quantity_per_line: int = 50
    # POST /v1/orders past Litestar's request cycle (server/orders/lane.py says what it serves
    # and why); off, every checkout goes through the controller. Kept for side-by-side runs.
    checkout_lane: bool = True

    # The HTTP edge (server/infra/http.py). Request bodies, per route, sized to the largest
    # valid request: an order of 50 lines with a modifier or two each is ~9 KB compact and
    # ~14 KB pretty-printed; a sign-in (phone, code, name; email, password, TOTP; a refresh
    # token) stays under 1 KB. Anything else with a body takes the general limit.
    body_max_bytes: int = 64 * 1024
    order_body_max_bytes: int = 16 * 1024
    auth_body_max_bytes: int = 4 * 1024
    # Strict-Transport-Security outside dev.
    hsts_max_age_s: int = 2 * 365 * 24 * 3600
    # /metrics is for the scraper only: from these networks (comma-separated addresses or
    # CIDRs; empty means any) and, when a token is set, with ``Authorization: Bearer <token>``.
    metrics_clients: str = "127.0.0.0/8,::1/128"
    metrics_token: str | None = None

    # Staff.
    # Failed sign-ins on one staff email (from anywhere) lock its password sign-in for
    # staff_lockout_s; the right password plus a TOTP code still gets through the lock.
    staff_max_failed_logins: int = 10
    staff_lockout_s: int = 900
    # Per client address (issue 21, finding 5): the first staff_sign_in_free_failures wrong
    # passwords cost nothing; each one after makes the client wait twice as long as the last
    # (staff_sign_in_first_delay_s, then 2x, 4x, ... at most staff_sign_in_max_delay_s), and
    # staff_sign_in_failures_per_client in staff_sign_in_window_s stop it for the window.
    staff_sign_in_free_failures: int = 3
    staff_sign_in_first_delay_s: int = 1
    staff_sign_in_max_delay_s: int = 60
    staff_sign_in_failures_per_client: int = 20
    staff_sign_in_window_s: int = 900
    # Wrong PINs per paired device, every email together: past pin_attempts_per_window the
    # device is slowed down like a client address above; pin_failures_per_device in
    # pin_window_s stop it for the window.
    pin_failures_per_device: int = 30
    # POST /v1/kiosk/devices/pair per client address per pin_window_s (a code has 31^8 values
    # but is valid for pairing_ttl_s: guessing must stay hopeless).
    pair_attempts_per_window: int = 10
    pin_attempts_per_window: int = 5
    pin_attempts_per_day: int = 20  # per email, on all devices together
    pin_window_s: int = 300
    scans_per_minute: int = 120
    redemptions_per_minute: int = 30
    pairing_ttl_s: int = 15 * 60
    redemption_timeout_s: int = 600
    open_orders_per_card: int = 20
    # One guest may not hold a pickup slot hostage with unpaid orders (issue 21, finding 3).
    unpaid_orders_per_guest: int = 3
    slot_places_per_guest: int = 2
    # An offline kiosk replays scans with their scan time: how old, and how far ahead of the
    # server's clock, that time may be.
    scan_replay_max_age_s: int = 24 * 3600
    scan_clock_skew_s: int = 120

    # `regulars serve` on SIGTERM stops accepting at once, then gives the requests in flight this
    # long to finish before it cancels them (a cancelled checkout rolls back whole) and exits.
    # With the preStop wait, under the pod's terminationGracePeriodSeconds (deploy/k8s), so a
    # pod is never SIGKILLed mid-drain.
    shutdown_grace_s: float = 30.0
    # POS intake (DESIGN §10). A till's HMAC key must be recoverable to check signatures, so
    # it is sealed (encrypted and authenticated) with this key, not hashed. Unset (dev and
    # tests only), the JWT secret is used with its own label; prod requires it, since a JWT
    # rotation would otherwise leave every till's sealed secret unreadable.
    pos_seal_key: str | None = None
    # A signed request older than this (or this far ahead of our clock) is refused.
    pos_signature_max_age_s: int = 300
    pos_signature_skew_s: int = 60
    # A signature is remembered (Redis) this long, so a replay within the window is refused.
    pos_signature_seen_ttl_s: int = 900
    # Active keys an integration may hold at once (rotation).
    pos_keys_active_max: int = 2
    # Till secrets kept opened in memory (server/pos/auth.py), at most this many per process.
    pos_key_cache_entries: int = 1_000
    # How long an anonymous receipt's claim code can be claimed.
    pos_claim_window_s: int = 30 * 24 * 3600
    # Points held as a till tender are voided if the till neither posts nor voids them.
    pos_redemption_timeout_s: int = 300
    # A QR scanned at the till may reach us this late (an offline till resyncing).
    pos_scan_max_age_s: int = 7 * 24 * 3600
    # POST /v1/pos/receipts:batch: lines per batch and bytes per line.
    pos_batch_max_lines: int = 10_000
    pos_batch_line_max_bytes: int = 256 * 1024
    pos_batch_max_bytes: int = 64 * 1024 * 1024
    # The whole batch must arrive within this; it is spooled to a temporary file past the
    # memory size, and taken in transactions of this many lines once its signature matches.
    pos_batch_timeout_s: float = 300.0
    pos_batch_spool_memory_bytes: int = 1024 * 1024
    # 1,000: the per-chunk statements and commit are spread over more receipts; with two
    # chunks in flight the import ran ~12 % faster than at 500 (docs/PERFORMANCE.md, "Batch
    # import: two chunks in flight"). A realtime receipt of a guest whose points the chunk is
    # earning waits for that chunk's commit (~0.15-0.3 s).
    pos_batch_chunk_lines: int = 1000
    # A batch (an import) that has taken this many lines refreshes the planner's statistics of
    # receipt_keys, and again each time that doubles (0: never), while the planner counts
    # fewer keys than the batch took. Autovacuum analyzes a table a minute or more late: a
    # fresh one imported into kept the statistics of an empty table, and each chunk's replay
    # read and key update scanned every key of the till (quadratic in the file).
    pos_batch_analyze_lines: int = 1000
    # Phone numbers a batch remembers in E.164 (the process's intake; ~200 B each).
    pos_phones_remembered: int = 4096
    # Per integration: guest lookups (a phone number is guessable) and tender holds.
    pos_lookups_per_minute: int = 120
    pos_redemptions_per_minute: int = 60
    # What intake knows of the catalogue (SKU -> menu item, non-earning categories) is kept
    # for menu_cache_ttl_s, at most this many answers per process (server/pos/catalogue.py).
    pos_catalogue_cache_entries: int = 20_000
    # POST /v1/pos/receipts past Litestar's request cycle (server/pos/lane.py says what it
    # serves and why); off, every receipt goes through the controller. For side-by-side runs.
    pos_receipt_lane: bool = True
    # A sale naming a guest by card or phone as two statements (server/pos/guest_sale.py: one
    # read, one write that checks the guest's profile is unchanged) instead of a transaction of
    # ~14; off, it goes the transactional way (for comparing both). A write that met a
    # concurrent change is read and tried again up to this many times in all, then taken the
    # transactional way.
    pos_guest_sale_fast: bool = True
    pos_guest_sale_attempts: int = 3

    # Jobs.
    worker_interval_s: float = 15.0
    slow_jobs_interval_s: float = 3600.0
    reconcile_grace_s: float = 30.0
    # After a commit, how many guests' wallets are mirrored to Redis side by side (their calls
    # share round trips on the pipelined line; each may reload its wallet from PostgreSQL).
    loyalty_mirror_guests_at_once: int = 16
    job_batch_size: int = 500
    # A backlog (orders past their payment window, holds past their timeout) drains in chunks
    # at this share of the worker's time, beside the checkouts rather than as a burst that
    # stalls them: 500 expiries and 500 voids took ~3 s on a loaded box (docs/PERFORMANCE.md).
    job_chunk_size: int = 50
    worker_duty: float = 0.25
    # Stored answers of idempotent requests (Idempotency-Key) are replayed this long, then
    # forgotten by the slow jobs; a retry after that is a new request.
    idempotency_retention_days: int = 7

    # Orders out to the till (DESIGN §10): Standard Webhooks to each integration's URL.
    # A delivery is claimed for pos_webhook_lease_s, which must outlast the HTTP timeout so a
    # slow till is never sent the same event by a second worker meanwhile.
    pos_webhook_timeout_s: float = 5.0
    pos_webhook_lease_s: float = 30.0
    pos_webhook_max_attempts: int = 8
    # The retry ladder: doubling from the base, capped, jittered (8 attempts span ~20 min).
    pos_webhook_backoff_base_s: float = 10.0
    pos_webhook_backoff_max_s: float = 600.0
    pos_webhook_batch_size: int = 50
    # A webhook secret replaced by an admin keeps signing beside the new one this long, for the
    # till to be switched over (0: it stops at once).
    pos_webhook_secret_overlap_s: int = 86_400
    pos_webhook_interval_s: float = 1.0
    # Let webhook URLs be plain http or reach loopback and private addresses (server/pos/
    # webhook_net.py, the SSRF guard): for a till simulator beside `regulars dev` and the tests'
    # receivers. Refused with REGULARS_ENV=prod.
    pos_webhook_private_ok: bool = False
    # Whether this worker fans order events out to tills and delivers their webhooks (the
    # deliveries are claimed, so any number of workers may; off for a worker that must not,
    # such as the test suite's live server beside the webhook tests' own deliverers).
    pos_webhooks_deliver: bool = True
    # Events per page of GET /v1/pos/orders.
    pos_feed_page_max: int = 200

    def __post_init__(self) -> None:
        for name in (
            "db_pool_min",
            "db_pool_max",
            "redis_pool_max",
            "page_size_max",
            "checkouts_in_flight",
            "job_chunk_size",
            "idempotency_retention_days",
            "loyalty_mirror_guests_at_once",
            "body_max_bytes",
            "order_body_max_bytes",
            "auth_body_max_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{PREFIX}{name.upper()} must be at least 1")
        if self.pos_webhook_lease_s <= self.pos_webhook_timeout_s:
            raise ValueError(
                f"{PREFIX}POS_WEBHOOK_LEASE_S must exceed {PREFIX}POS_WEBHOOK_TIMEOUT_S"
            )
        if self.pos_webhook_max_attempts < 1 or self.pos_webhook_batch_size < 1:
            raise ValueError(f"{PREFIX}POS_WEBHOOK_MAX_ATTEMPTS and _BATCH_SIZE must be >= 1")
        if self.pos_webhook_secret_overlap_s < 0:
            raise ValueError(f"{PREFIX}POS_WEBHOOK_SECRET_OVERLAP_S must be >= 0")
        if self.shutdown_grace_s <= 0:
            raise ValueError(f"{PREFIX}SHUTDOWN_GRACE_S must be above 0")
        if not 0 < self.worker_duty <= 1:
            raise ValueError(f"{PREFIX}WORKER_DUTY must be above 0 and at most 1")
        if self.db_pool_min > self.db_pool_max:
            raise ValueError(f"{PREFIX}DB_POOL_MIN must not exceed {PREFIX}DB_POOL_MAX")
        for cidr in filter(None, (part.strip() for part in self.trusted_proxies.split(","))):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{PREFIX}TRUSTED_PROXIES: {cidr!r} is not a CIDR") from None
        if self.env == "prod" and self.pos_webhook_private_ok:
            raise ValueError(f"{PREFIX}POS_WEBHOOK_PRIVATE_OK must be off when {PREFIX}ENV=prod")
        if self.env == "prod" and not self.jwt_secret:
            raise ValueError(f"{PREFIX}JWT_SECRET is required when {PREFIX}ENV=prod")
        if self.env == "prod" and not self.pos_seal_key:
            raise ValueError(
                f"{PREFIX}POS_SEAL_KEY is required when {PREFIX}ENV=prod: it seals the tills'"
                " secrets and must outlive JWT secret rotations (a deployment that ran without"
                ' it keeps its tills by setting it to "pos-seal:" followed by its JWT secret)'
            )
        try:
            self.metrics_networks  # noqa: B018 - parsed once here so a typo stops start-up
        except ValueError as exc:
            raise ValueError(f"{PREFIX}METRICS_CLIENTS: {exc}") from None

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def metrics_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The networks ``metrics_clients`` names (empty: any address may scrape)."""
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in self.metrics_clients.split(",")
            if part.strip()
        )


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read ``REGULARS_*`` variables (and explicit overrides) into a validated Settings.

    Unknown ``REGULARS_*`` names are refused too: a misspelt variable silently ignored is
    the kind of mistake this exists to catch.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, object] = {
        key[len(PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(PREFIX) and value != ""
    }
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(str(exc))) from None
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _explain(message: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.db_pool_max`"; name the variable instead.
    if "- at `$." in message:
        text, _, path = message.partition(" - at `$.")
        field = path.rstrip("`").split(".")[0].split("[")[0]
        return f"{PREFIX}{field.upper()}: {text}"
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        return f"{PREFIX}{field.upper()} is not a known setting"
    return message
