"""The `regulars` command line: dev, serve, worker, migrate, seed, reconcile, token,
integration, import."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import msgspec

from server.infra.embedded import (
    WAL_RESERVE_MB,
    EmbeddedError,
    EmbeddedServices,
    discover,
    port_is_free,
)
from server.settings import Settings, SettingsError, load_settings

__all__ = ["main"]


class CliError(Exception):
    """A one-line error for the operator; the command exits non-zero."""


def _fail(message: str) -> NoReturn:
    print(f"regulars: {message}", file=sys.stderr)
    raise SystemExit(2)


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    data_dir = getattr(args, "data_dir", None) or os.environ.get("REGULARS_DATA_DIR") or ".regulars"
    return load_settings(None, data_dir=data_dir, **overrides)


def _with_urls(settings: Settings) -> Settings:
    """Settings with database and Redis URLs: from the environment, or from a running dev."""
    if settings.database_url and settings.redis_url:
        return settings
    running = discover(Path(settings.data_dir).resolve())
    if running is None:
        raise CliError(
            f"no running `regulars dev` under {settings.data_dir}; start one, pass --data-dir, "
            "or set REGULARS_DATABASE_URL and REGULARS_REDIS_URL"
        )
    return msgspec.structs.replace(
        settings,
        database_url=settings.database_url or running.database_url,
        redis_url=settings.redis_url or running.redis_url,
    )


async def _check_database(url: str) -> None:
    from server.infra.db import connect_once

    try:
        conn = await connect_once(url, timeout_s=5)
    except (OSError, TimeoutError) as exc:
        where = urlsplit(url)
        raise CliError(
            f"PostgreSQL at {where.hostname}:{where.port or 5432} does not answer ({exc.__class__.__name__}); "
            "is it running? check REGULARS_DATABASE_URL"
        ) from None
    except Exception as exc:
        raise CliError(f"cannot use the database: {exc}") from None
    await conn.close()


async def _migrate(url: str, quiet: bool = False) -> None:
    from server.infra.db import connect_once
    from server.infra.migrate import apply_migrations

    await _check_database(url)
    conn = await connect_once(url)
    try:
        applied = await apply_migrations(conn)
    finally:
        await conn.close()
    if not quiet:
        print("applied: " + ", ".join(applied) if applied else "schema is up to date")


async def _seed(url: str) -> bool:
    from server.infra.db import connect_once
    from server.seed.demo import seed_demo

    conn = await connect_once(url)
    try:
        return await seed_demo(conn)
    finally:
        await conn.close()


async def _with_services(settings: Settings, work: Callable[[Any], Awaitable[int]]) -> int:
    from server.lifespan import build_services

    assert settings.database_url
    await _check_database(settings.database_url)
    services = await build_services(settings)
    try:
        return await work(services)
    finally:
        await services.close()


# -- commands --------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    """Embedded PostgreSQL and Redis (unless URLs are given), migrations, demo data, the API
    and the worker in one process; Ctrl-C stops all of it."""
    from server.infra.observability import configure_logging

    # A till simulator on this machine may take the webhooks (server/pos/webhook_net.py).
    settings = _settings(args, env="dev", log_format="text", pos_webhook_private_ok=True)
    configure_logging("text", settings.log_level)
    if not port_is_free(args.host, args.port):
        raise CliError(
            f"port {args.port} on {args.host} is in use; stop what uses it or pass --port"
        )
    data_dir = Path(settings.data_dir).resolve()
    if args.fresh and data_dir.exists():
        other = discover(data_dir)
        if other is not None:
            raise CliError(
                f"{data_dir} is in use by process {other.owner_pid}; stop it before --fresh"
            )
        shutil.rmtree(data_dir)
    services = EmbeddedServices(
        data_dir,
        log=lambda msg: print(f"  {msg}", flush=True),
        wal_reserve_mb=args.wal_reserve_mb,
    )
    need_pg, need_redis = not settings.database_url, not settings.redis_url
    # SIGTERM behaves like Ctrl-C, so the finally below always stops the children.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if need_pg or need_redis:
            running = services.start(postgres=need_pg, redis=need_redis)
            settings = msgspec.structs.replace(
                settings,
                database_url=settings.database_url or running.database_url,
                redis_url=settings.redis_url or running.redis_url,
            )
        assert settings.database_url
        asyncio.run(_migrate(settings.database_url, quiet=True))
        seeded = asyncio.run(_seed(settings.database_url))
        _banner(settings, args.host, args.port, seeded)
        # uvloop, as in `serve`: py-spy showed the default loop's socket writes high in dev.
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve_dev(settings, args.host, args.port))
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping…", flush=True)
        services.stop()
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return None
    return uvloop.new_event_loop


def _banner(settings: Settings, host: str, port: int, seeded: bool) -> None:
    from server.seed.demo import DEMO_GUEST_PHONE, DEMO_PASSWORD, DEMO_PIN

    base = f"http://{host}:{port}"
    print(
        f"""
Regulars is running{" (demo brand loaded)" if seeded else ""}
  API            {base}/v1/locations
  API docs       {base}/schema   (Swagger UI: {base}/schema/swagger)
  health         {base}/healthz   ready: {base}/readyz   metrics: {base}/metrics
  database       {settings.database_url}
  redis          {settings.redis_url}
Demo logins
  staff          barista@ | shift_lead@ | manager@ | admin@demo.regulars.test  password {DEMO_PASSWORD}  PIN {DEMO_PIN}
  guest          phone {DEMO_GUEST_PHONE}: POST /v1/auth/otp, the code is printed in this log
  guest token    regulars token guest --phone {DEMO_GUEST_PHONE}
  kiosk          regulars-kiosk --demo   (or python -m kiosk --demo)
Ctrl-C stops everything.
""",
        flush=True,
    )


async def _serve_dev(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from server.app import create_app
    from server.infra.uvicorn_protocol import OneWriteHttpToolsProtocol
    from server.lifespan import build_services
    from server.worker import run_forever

    # A long-running server process, as in `serve` (Settings.gc_freeze and db_warm_up say why).
    app = create_app(msgspec.structs.replace(settings, gc_freeze=True, db_warm_up=True))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            http=OneWriteHttpToolsProtocol,
            log_config=None,
            access_log=False,
            # X-Forwarded-For is read by the app, from REGULARS_TRUSTED_PROXIES only.
            proxy_headers=False,
        )
    )
    worker_services = await build_services(settings)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_forever(worker_services, stop))
    try:
        await server.serve()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await worker
        await worker_services.close()


def cmd_serve(args: argparse.Namespace) -> int:
    """Production: given database and Redis URLs, N worker processes with uvloop; metrics
    summed over all of them; on SIGTERM, stop accepting, let what is in flight finish within
    ``shutdown_grace_s``, exit."""
    from server.infra import multiprocess_metrics

    settings = _with_urls(_settings(args, log_format="json"))
    assert settings.database_url
    asyncio.run(_migrate(settings.database_url, quiet=True))
    if not port_is_free(args.host, args.port):
        raise CliError(f"port {args.port} on {args.host} is in use; pass --port")
    # Before anything imports prometheus_client (it picks its storage at import).
    metrics_dir, ours = multiprocess_metrics.fresh_directory(os.environ)
    os.environ[multiprocess_metrics.ENV] = str(metrics_dir)
    try:
        _serve(args, settings)
    finally:
        if ours:
            multiprocess_metrics.remove_directory(metrics_dir)
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    assert settings.database_url
    os.environ["REGULARS_DATABASE_URL"] = settings.database_url
    os.environ["REGULARS_REDIS_URL"] = settings.redis_url or ""
    # Worker processes read settings from the environment: the data dir holds the dev JWT secret.
    os.environ["REGULARS_DATA_DIR"] = str(Path(settings.data_dir).resolve())
    os.environ.setdefault("REGULARS_LOG_FORMAT", "json")
    os.environ.setdefault("REGULARS_GC_FREEZE", "true")
    os.environ.setdefault("REGULARS_DB_WARM_UP", "true")
    workers = args.workers or os.cpu_count() or 1
    if args.server == "granian":
        from granian import Granian
        from granian.constants import Interfaces, Loops

        Granian(
            "server.asgi:app",
            address=args.host,
            port=args.port,
            interface=Interfaces.ASGI,
            workers=workers,
            loop=Loops.uvloop,
            log_access=False,
            workers_kill_timeout=math.ceil(settings.shutdown_grace_s),
        ).serve()
    else:
        import uvicorn

        from server.infra.uvicorn_protocol import OneWriteHttpToolsProtocol

        uvicorn.run(
            "server.asgi:app",
            host=args.host,
            port=args.port,
            workers=workers,
            loop="uvloop",
            http=OneWriteHttpToolsProtocol,
            access_log=False,
            log_config=None,
            # X-Forwarded-For is read by the app, from REGULARS_TRUSTED_PROXIES only.
            proxy_headers=False,
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
        )


def cmd_worker(args: argparse.Namespace) -> int:
    """Scheduled jobs and the outbox relay until SIGINT/SIGTERM."""
    from server.infra.observability import configure_logging
    from server.worker import run_forever, run_once

    settings = _with_urls(_settings(args))
    configure_logging(settings.log_format, settings.log_level)

    async def work(services: Any) -> int:
        if args.once:
            print(await run_once(services))
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_forever(services, stop)
        return 0

    return asyncio.run(_with_services(settings, work))


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _with_urls(_settings(args))
    assert settings.database_url
    asyncio.run(_migrate(settings.database_url))
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    if not args.demo:
        raise CliError("say what to seed: --demo")
    settings = _with_urls(_settings(args))
    assert settings.database_url
    asyncio.run(_migrate(settings.database_url, quiet=True))
    print(
        "demo brand loaded"
        if asyncio.run(_seed(settings.database_url))
        else "demo brand already present"
    )
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Compare every Redis wallet with the ledger, repair Redis, print what was fixed."""
    from server.loyalty.reconcile import reconcile

    settings = _with_urls(_settings(args))
    grace = settings.reconcile_grace_s if args.grace_s is None else args.grace_s

    async def work(services: Any) -> int:
        repairs = await reconcile(services.loyalty, grace, services.settings.job_batch_size)
        for repair in repairs:
            print(f"{repair.guest_id}: " + "; ".join(repair.what))
        print(f"{len(repairs)} wallet(s) repaired")
        return 0

    return asyncio.run(_with_services(settings, work))


def cmd_token(args: argparse.Namespace) -> int:
    """Print an access token and nothing else."""
    settings = _with_urls(_settings(args))

    async def work(services: Any) -> int:
        from server.guests.service import normalise_phone
        from server.infra.identity import Principal
        from server.infra.problems import Problem

        async with services.db.transaction() as conn:
            if args.kind == "guest":
                try:
                    phone = normalise_phone(args.phone)
                except Problem as exc:
                    raise CliError(exc.detail) from None
                brand_id = await services.guests.brand_id(conn)
                guest_id = await conn.fetchval(
                    "SELECT id FROM guests WHERE brand_id = $1 AND phone_e164 = $2", brand_id, phone
                )
                welcome = None
                if guest_id is None:
                    if not args.create:
                        raise CliError(f"no guest with phone {phone}; add --create to enrol one")
                    guest_id, _, welcome = await services.guests.enrol(conn, brand_id, phone)
                principal = Principal(kind="guest", subject_id=guest_id, brand_id=brand_id)
            else:
                staff_id = await conn.fetchval(
                    "SELECT id FROM staff_users WHERE email = $1", args.email.lower()
                )
                if staff_id is None:
                    raise CliError(f"no staff user {args.email}")
                principal = await services.auth.principal_for(conn, "staff", staff_id)
        if args.kind == "guest":
            await services.loyalty.mirror_all([welcome])
        print(services.tokens.issue(principal))
        return 0

    return asyncio.run(_with_services(settings, work))


def cmd_integration(args: argparse.Namespace) -> int:
    """Create a till integration for a location; print its first key as one JSON line (the
    secret is shown this once)."""
    from server.infra.problems import Problem
    from server.pos.integrations import IntegrationIn

    try:
        body = msgspec.convert(
            {
                "location_id": args.location_id,
                "webhook_url": args.webhook_url,
                "vendor_store_id": args.vendor_store_id,
            },
            IntegrationIn,
        )
    except msgspec.ValidationError as exc:
        raise CliError(f"--location-id, --webhook-url or --vendor-store-id: {exc}") from None
    settings = _with_urls(_settings(args))

    async def work(services: Any) -> int:
        try:
            created = await services.pos_integrations.create(body)
        except Problem as exc:
            raise CliError(exc.detail) from None
        line = {
            "integration_id": str(created.integration_id),
            "key_id": created.key_id,
            "secret": created.secret,
        }
        if created.webhook_secret:  # the till verifies our webhooks with it
            line["webhook_secret"] = created.webhook_secret
        print(msgspec.json.encode(line).decode())
        return 0

    return asyncio.run(_with_services(settings, work))


def cmd_integration_webhook(args: argparse.Namespace) -> int:
    """Point an integration's webhooks at a new URL with a new secret (``--url``; the old
    secret signs beside it for a while unless ``--at-once``), or stop them (``--remove``);
    print the result as one JSON line (the new secret is shown this once)."""
    from server.infra.problems import Problem
    from server.pos.integrations import WebhookIn

    try:
        integration_id = uuid.UUID(args.integration_id)
        body = msgspec.convert(
            {
                "webhook_url": None if args.remove else args.url,
                "keep_previous_secret": not args.at_once,
            },
            WebhookIn,
        )
    except (ValueError, msgspec.ValidationError) as exc:
        raise CliError(f"--integration-id or --url: {exc}") from None
    settings = _with_urls(_settings(args))

    async def work(services: Any) -> int:
        try:
            done = await services.pos_integrations.set_webhook(None, integration_id, body)
        except Problem as exc:
            raise CliError(exc.detail) from None
        print(msgspec.json.encode(done).decode())
        return 0

    return asyncio.run(_with_services(settings, work))


def cmd_import(args: argparse.Namespace) -> int:
    """Import a file of past receipts (NDJSON of ours, or CSV of receipt lines) at a location;
    a progress bar on a terminal, the refused lines and a summary line at the end."""
    from server.infra.problems import Problem
    from server.pos.importing import ImportFileError, parse_column_map

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no file {args.file}")
    try:
        location_id = uuid.UUID(args.location_id)
        integration_id = uuid.UUID(args.integration) if args.integration else None
        column_map = parse_column_map(args.map)
    except ValueError as exc:  # ImportFileError is one
        raise CliError(str(exc)) from None
    settings = _with_urls(_settings(args))
    size = path.stat().st_size

    async def work(services: Any) -> int:
        with _progress(size) as advance:
            try:
                report = await services.receipt_import.run(
                    path,
                    location_id=location_id,
                    integration_id=integration_id,
                    column_map=column_map,
                    progress=advance,
                )
            except (Problem, ImportFileError) as exc:
                raise CliError(getattr(exc, "detail", str(exc))) from None
        for line, detail in report.refused:
            print(f"line {line}: refused: {detail}")
        print(report.summary())
        return 0

    # uvloop, as in `serve`: the import's Python is half its time, and its loop's part too.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_with_services(settings, work))


@contextlib.contextmanager
def _progress(total_bytes: int) -> Iterator[Callable[[int], None]]:
    """A progress bar over the file's bytes on a terminal; nothing when output is piped."""
    if not sys.stdout.isatty():
        yield lambda done: None
        return
    from rich.progress import BarColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), TransferSpeedColumn()
    ) as bar:
        task = bar.add_task("importing", total=total_bytes)
        yield lambda done: bar.update(task, completed=done)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regulars", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--data-dir", help="where `regulars dev` keeps its data (default .regulars)")
        p.set_defaults(handler=handler)
        return p

    dev = command("dev", cmd_dev, "run everything locally on embedded PostgreSQL and Redis")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--fresh", action="store_true", help="delete the data directory first")
    dev.add_argument(
        "--wal-reserve-mb",
        type=int,
        default=WAL_RESERVE_MB,
        help="WAL made ready on first start so a rush never waits for new WAL files "
        f"(default {WAL_RESERVE_MB}; 0 for none)",
    )
    serve = command("serve", cmd_serve, "production API server")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    # uvicorn by default: on the checkout it served 28 % more requests than granian with one
    # worker (loadtests.bench --servers uvicorn:1,granian:1); granian wins only on /healthz.
    serve.add_argument("--server", choices=["granian", "uvicorn"], default="uvicorn")
    worker = command("worker", cmd_worker, "scheduled jobs and the outbox relay")
    worker.add_argument("--once", action="store_true", help="one pass, then exit")
    command("migrate", cmd_migrate, "apply database migrations")
    seed = command("seed", cmd_seed, "load data")
    seed.add_argument("--demo", action="store_true", help="the demo café chain")
    reconcile = command("reconcile", cmd_reconcile, "repair Redis wallets from the ledger")
    reconcile.add_argument(
        "--grace-s", type=float, default=None, help="spare holds younger than this"
    )
    token = command("token", cmd_token, "print an access token")
    kinds = token.add_subparsers(dest="kind", required=True)
    guest = kinds.add_parser("guest")
    guest.add_argument("--phone", required=True)
    guest.add_argument("--create", action="store_true")
    guest.add_argument("--data-dir")
    staff = kinds.add_parser("staff")
    staff.add_argument("--email", required=True)
    staff.add_argument("--data-dir")
    _pos_commands(command)
    return parser


def _pos_commands(
    command: Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser],
) -> None:
    """``regulars integration`` and ``regulars import``: the POS side's commands."""
    integration = command("integration", cmd_integration, "POS integrations of a location")
    actions = integration.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new integration and its first signing key")
    create.add_argument("--location-id", required=True)
    create.add_argument("--webhook-url", default=None)
    create.add_argument(
        "--vendor-store-id",
        default=None,
        help="the vendor's id of this store (Square location_id, Loyverse store_id)",
    )
    create.add_argument("--data-dir")
    webhook = actions.add_parser(
        "webhook",
        help="a new webhook URL and secret (the old secret signs beside it for a while), or none",
    )
    webhook.set_defaults(handler=cmd_integration_webhook)
    webhook.add_argument("--integration-id", required=True)
    target = webhook.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="https URL the till takes order events at")
    target.add_argument("--remove", action="store_true", help="stop webhooks; the till polls")
    webhook.add_argument(
        "--at-once", action="store_true", help="the old secret stops signing now (it leaked)"
    )
    webhook.add_argument("--data-dir")
    imports = command("import", cmd_import, "import past data")
    what = imports.add_subparsers(dest="what", required=True)
    receipts = what.add_parser("receipts", help="NDJSON of our receipts, or CSV of receipt lines")
    receipts.add_argument("file")
    receipts.add_argument("--location-id", required=True)
    receipts.add_argument("--integration", default=None, help="default: the location's oldest")
    receipts.add_argument("--map", default=None, help="OURS=THEIRS,… to rename the file's columns")
    receipts.add_argument("--data-dir")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (CliError, SettingsError, EmbeddedError) as exc:
        _fail(str(exc))
