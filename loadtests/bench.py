"""Checkout benchmark: ``python -m loadtests.bench [--quick]``.

One run starts its own stack (``regulars dev`` on a temp data dir for PostgreSQL and Redis,
plus the server(s) under test as ``regulars serve``), prepares guests, then measures in
interleaved rounds (A B A B …; the order inside a round alternates too), so that the noise
of a shared machine hits every figure alike, and reports median and min-max per figure:

F1  PostgreSQL floor: the SQL of one checkout with points as the server sends it — one call
    of place_order (migrations 0010 and 0012: idempotency claim, account, guest caps and tier,
    guarded hold + pending transfer, order + lines, slot + stored response), one round trip,
    no BEGIN/COMMIT — by pgbench -M prepared at 8 and 16 clients, synchronous_commit on,
    same database.
F4  framework ceiling: GET /healthz under wrk (closed loop).
F5  checkout closed loop: wrk with unique Idempotency-Keys and rotating guest tokens at 8, 16
    and 32 connections: max rps and p99.
F6  checkout open loop at 30/50/75 % of that round's F5 (loadtests/openloop.py): p50/p95/p99;
    /healthz at the same rates for R4.
R1  = F5 / F1 (best of each) of the same round, R4 = p99(checkout) / p99(healthz) at the same rate.
P1  POS floor: one receipt's own SQL (server/pos/receipts.py's and guest_sale.py's statements,
    bound to literals; two anonymous sales, one statement each, to one naming a guest, a read and
    a write), no transaction, pgbench at 8 and 16 clients.
P5  signed POST /v1/pos/receipts per second (shared/pos_signing.py; loadtests/pos_receipts.py's
    receipts) under wrk at 8, 16 and 32 connections; R_pos = P5 / P1 (best of each), same round.
CPU ms of CPU per checkout, by part of the stack (from /proc), for F1 at 8 clients and F5 at 16
    connections: PostgreSQL (all its processes), the API server, Redis, the load generator,
    and how busy the whole box was. On two shared cores R1 is about PostgreSQL's share of it.

A server spec such as ``uvicorn:1:cpus=1`` keeps the server on CPU 1 and, while it is
measured, PostgreSQL and Redis on the other CPUs (CPU placement as an experiment; the product
has no such setting, see docs/PERFORMANCE.md); ``sched=batch`` runs PostgreSQL and Redis under
SCHED_BATCH while it is measured (``sched=batch-all``: the server too), so that a woken
backend does not preempt the running API. ``stack=free`` with ``cpus=`` pins only the server
and leaves PostgreSQL and Redis free on every CPU; ``nice=N`` runs the server's processes at
that nice value while measured; ``pg.NAME=VALUE`` sets a PostgreSQL setting (``ALTER SYSTEM``,
reloaded) while it is measured and resets it afterwards. ``tree=/path/to/worktree`` runs the server from
another checkout (say ``git worktree add /tmp/base HEAD~1``) to compare code side by side
against the same stack. F1 always runs with PostgreSQL free to use every CPU
under the default policy: it is the floor.

Afterwards a correctness check: one order per idempotency key, no negative spendable balance,
ledger sums to zero (LEDGER_CHECK), every Redis wallet equals the ledger
(``regulars reconcile --grace-s 0`` says "0 wallet(s) repaired"). The last line is
``R1=<median> (min <a>, max <b>)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
PG_BIN = Path(str(__import__("pgserver").__file__)).parent / "pginstall" / "bin"
SPREAD_SLOTS = 13 * 24 * 12  # 5-minute slots over 13 days: no slot fills up
# Server spec options the bench applies itself; any other becomes a REGULARS_* setting.
BENCH_OPTIONS = ("cpus", "sched", "tree", "stack", "nice")

WRK_LUA = r"""
-- args: tokens_file location item1 item2 key_prefix nslots base_epoch
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  tokens = {}
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  loc, item1, item2, prefix = args[2], args[3], args[4], args[5]
  nslots, base = tonumber(args[6]), tonumber(args[7])
  math.randomseed(os.time() + tid * 7919)
end
function request()
  counter = counter + 1
  local tok = tokens[((counter * 2 + tid) % #tokens) + 1]
  local pickup = os.date("!%Y-%m-%dT%H:%M:%SZ", base + 300 * math.random(0, nslots - 1))
  local body = string.format(
    '{"location_id":"%s","lines":[{"item_id":"%s","quantity":1},{"item_id":"%s","quantity":1}],' ..
    '"points_to_spend":%d,"pickup_at":"%s"}', loc, item1, item2, math.random(20, 100), pickup)
  return wrk.format("POST", "/v1/orders", {
    ["Authorization"] = "Bearer " .. tok,
    ["Idempotency-Key"] = prefix .. "-" .. tid .. "-" .. counter,
    ["Content-Type"] = "application/json"}, body)
end
"""

WRK_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_ms":%.3f,"p99_ms":%.3f,"non2xx":%d,' ..
    '"socket_errors":%d}\n', summary.requests, summary.duration, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, e.status, e.connect + e.read + e.write + e.timeout))
end
"""

PGBENCH_SQL = r"""
\set g random(1, :nguests)
\set r random(1, 4000000000000000000)
\set slot random(0, :nslots - 1)
\set pts random(20, 100)
SELECT claimed, tier, posted, pending, version, chosen_slot FROM place_order('bench-f1-orders', (:client_id::text || '-' || :r::text), '\x0102'::bytea, (SELECT guest_id FROM bench.f1_guests WHERE n = :g), '{0,500,2000}'::bigint[], '{30,37,45}'::int[], ARRAY[convert_to(repeat('x', 900), 'UTF8'), convert_to(repeat('y', 900), 'UTF8'), convert_to(repeat('z', 900), 'UTF8')], :pts, md5('t' || (:client_id::text || '-' || :r::text))::uuid, :redeemed::uuid, now() + interval '900 seconds', md5('o' || (:client_id::text || '-' || :r::text))::uuid, :brand::uuid, :loc::uuid, 'awaiting_payment', 'EUR', 620, 0, :pts, 620 - :pts, NULL, to_timestamp(:base::bigint + 300 * :slot::bigint + 120), now() + interval '900 seconds', now(), jsonb_build_array(jsonb_build_object('id', md5('l0' || (:client_id::text || '-' || :r::text))::uuid, 'line_no', 0, 'item_id', :item1::uuid, 'sku', 'CAP', 'name', 'Cappuccino', 'quantity', 1, 'unit_price_minor', 380, 'modifier_ids', '[]'::jsonb, 'modifier_names', '[]'::jsonb, 'gross_minor', 380, 'discount_minor', 0, 'points_spent', 10, 'paid_minor', 370, 'earns_points', true), jsonb_build_object('id', md5('l1' || (:client_id::text || '-' || :r::text))::uuid, 'line_no', 1, 'item_id', :item2::uuid, 'sku', 'CRO', 'name', 'Croissant', 'quantity', 1, 'unit_price_minor', 240, 'modifier_ids', '[]'::jsonb, 'modifier_names', '[]'::jsonb, 'gross_minor', 240, 'discount_minor', 0, 'points_spent', 10, 'paid_minor', 230, 'earns_points', true)), ARRAY[to_timestamp(:base::bigint + 300 * :slot::bigint)], ARRAY[to_timestamp(:base::bigint + 300 * :slot::bigint)], 5, 500, 1000000, 1000000);
"""


POS_WRK_LUA = r"""
-- args: requests_file key_id. Each line of the file is "<X-Regulars-Signature>\t<body>",
-- signed beforehand (loadtests/bench.py: pos_requests); thread t sends lines t, t+2, ...
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  reqs = {}
  local n = 0
  for line in io.lines(args[1]) do
    if n % 2 == tid then reqs[#reqs + 1] = line end
    n = n + 1
  end
  key, i = args[2], 0
end
function request()
  i = i + 1
  -- Past the end the lines come round again: replayed signatures, refused (non-2xx).
  local line = reqs[((i - 1) % #reqs) + 1]
  local tab = string.find(line, "\t", 1, true)
  return wrk.format("POST", "/v1/pos/receipts", {
    ["X-Regulars-Key"] = key,
    ["X-Regulars-Signature"] = string.sub(line, 1, tab - 1),
    ["Content-Type"] = "application/json"}, string.sub(line, tab + 1))
end
"""


def _bind(statement: str, *values: str) -> str:
    """One of the server's SQL statements as a pgbench line: ``$n`` becomes ``values[n-1]``
    (a pgbench expression), so the floor runs the very text the intake sends."""
    text = statement
    for n in range(len(values), 0, -1):  # $12 before $1
        text = text.replace(f"${n}", values[n - 1])
    return " ".join(text.split()) + ";"


def _pos_guest_literals() -> tuple[str, str]:
    """The guest sale's lines (one JSON object each, as server/pos/receipts.py's line_rows
    encodes them) and its folded profile (as the counter's fold_stored gives a regular's), as
    SQL literals; the profile counts on from what the read returned (``\\gset``), and says
    the spend it read (``spend_read``, as server/counter/profiles.py's fold_stored)."""
    line_objects = "'" + json.dumps([
        {"n": 0, "line_no": n, "sku": sku, "name": name, "category": cat, "quantity": "1",
         "unit_price_minor": price, "gross_minor": price, "discount_minor": 0, "tax_minor": 0,
         "voided": False, "gift_card": False, "earns": True, "points_paid": 0,
         "paid_minor": price, "points_earned": points}
        for n, sku, name, cat, price, points in (
            (1, "CAP", "Cappuccino", "coffee", 380, 3), (2, "CRO", "Croissant", "bakery", 320, 4)
        )
    ]) + "'::jsonb"  # fmt: skip
    profile = (
        "jsonb_build_object('visits_total', :visits_total + 1, 'visits_30d', 1,"
        " 'spend_total_minor', 700, 'avg_ticket_minor', 700, 'usual_weekday', 1,"
        " 'usual_hour', 8, 'last_visit_at', now(), 'top_items', '[{\"item_id\":"
        ' "00000000-0000-0000-0000-000000000000", "name": "Cappuccino", "count": 1,'
        " \"price_minor\": 380}]'::jsonb, 'points_earned_12m', :points_earned_12m + 7,"
        " 'weekday_counts', '[0,1,0,0,0,0,0]'::jsonb, 'hour_counts', to_jsonb(array_fill(0,"
        " ARRAY[24])), 'recent_visits', jsonb_build_array(now()),"
        # The spend the fold read, which guest_profile_replace compares (migration 0029).
        " 'spend_read', :spend_total_minor::bigint)"
    )
    return line_objects, profile


def pos_pgbench_scripts() -> tuple[str, str]:
    """The SQL of one signed sale as the intake sends it (server/pos/receipts.py): (an
    anonymous sale: one statement, no transaction, claiming the key with its stored answer,
    the claim code, receipt and lines; a sale naming a guest by phone in two statements, no
    transaction (server/pos/guest_sale.py): the read of key, guest, account, tier window, time
    zone and profile, and the write of key, earn, profile (if unchanged), receipt and lines).
    Both check the till's key is active (sql.KEY_ACTIVE), as the lane's do. The guest's write binds
    what the read returned (``\\gset``); a write that meets a concurrent change of the guest's
    profile fails with 40001 and pgbench tries the sale again (``--max-tries``), as the intake
    does. Two lines, like most of loadtests/pos_receipts.py's receipts. The catalogue reads
    and the program are not sent: the intake keeps their answers (server/pos/catalogue.py),
    and the bench sends few SKUs."""
    from server.pos import sql as pos_sql

    head = [
        r"\set r random(1, 4000000000000000000)",
        r"\set g random(1, :nguests)",
    ]
    ext = "('pb-' || :client_id || '-' || :r)"
    rid = f"md5('r' || {ext})::uuid"
    digest = f"sha256(convert_to({ext}, 'UTF8'))"
    answer = "convert_to(repeat('x', 120), 'UTF8')"
    lines = [
        "'{1,2}'::int[]", "'{CAP,CRO}'::text[]", "'{Cappuccino,Croissant}'::text[]",
        "'{coffee,bakery}'::text[]", "'{1,1}'::numeric[]", "'{380,320}'::bigint[]",
        "'{380,320}'::bigint[]", "'{0,0}'::bigint[]", "'{0,0}'::bigint[]",
        "'{f,f}'::bool[]", "'{f,f}'::bool[]", "'{t,t}'::bool[]", "'{0,0}'::int[]",
        "'{380,320}'::bigint[]",
    ]  # fmt: skip
    line_objects, profile = _pos_guest_literals()

    # One statement, no transaction: WRITE_ANONYMOUS_SALE (Intake._take_anonymous).
    anonymous = [
        *head,
        _bind(
            pos_sql.WRITE_ANONYMOUS_SALE,
            ":brand::uuid", "now()", rid, ":integ::uuid", ":loc::uuid", ext, "'EUR'", "700",
            "0", "700", "0", *lines, "'{0,0}'::int[]", answer, digest,
            f"upper(substr(md5('c' || {ext}), 1, 10))", "(now() + interval '30 days')", "0",
            ":key::text",
        ),
    ]  # fmt: skip
    read = _bind(
        pos_sql.GUEST_SALE_READ, ":integ::uuid", ext, ":brand::uuid", "NULL",
        "(SELECT phone FROM bench.pos_guests WHERE n = :g)", "now() - interval '365 days'",
        ":loc::uuid", "NULL", ":key::text",
    )  # fmt: skip
    named = [
        *head,
        read.removesuffix(";") + r" \gset",
        _bind(
            pos_sql.TAKE_GUEST_SALE,
            ":integ::uuid", ext, digest, answer, ":brand::uuid", "now()", rid, ":loc::uuid",
            ":guest_id::uuid", "'EUR'", "700", "0", "700", "0", "7", line_objects,
            ":account_id::uuid", "7", f"md5('t' || {ext})::uuid", ":issued::uuid", "'earn'",
            "now() + interval '12 months'", f"'receipt ' || {ext}", ":visits_total",
            ":points_earned_12m", profile,
        ),
    ]  # fmt: skip
    return "\n".join(anonymous) + "\n", "\n".join(named) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    logfile: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGINT)  # our own process group only
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)


# The bench's guests place many unpaid orders in few slots: the per-guest caps (issue 21) are
# for abuse, not for a benchmark, so they are lifted unless a server spec sets them.
UNCAPPED = {
    "REGULARS_UNPAID_ORDERS_PER_GUEST": "1000000",
    "REGULARS_SLOT_PLACES_PER_GUEST": "1000000",
}


def start(
    name: str,
    cmd: list[str],
    logdir: Path,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Proc:
    logfile = logdir / f"{name}.log"
    popen = subprocess.Popen(
        cmd,
        stdout=logfile.open("wb"),
        stderr=subprocess.STDOUT,
        env={**UNCAPPED, **os.environ, **(env or {})},
        start_new_session=True,
        cwd=cwd,
    )
    return Proc(name, popen, logfile)


def wait_healthy(url: str, proc: Proc, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.logfile.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not become healthy")


@dataclass
class Server:
    """A server under test: ``granian:1`` (server:workers[:pool=N]) or ``dev``."""

    spec: str
    url: str = ""
    proc: Proc | None = None
    pids: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.spec

    @property
    def options(self) -> dict[str, str]:
        """``uvicorn:1:pool=20:cpus=1`` → {"pool": "20", "cpus": "1"}."""
        return dict(opt.partition("=")[::2] for opt in self.spec.split(":")[2:])


def summarise_profile(path: Path, top: int = 25) -> str:
    """The frames with the largest inclusive and self share of a py-spy ``raw`` profile
    (collapsed stacks: ``frame;frame;… count``), idle event-loop samples left out."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [re.sub(r" \(.*/(site-packages/)?", " (", f) for f in stack.split(";")]
        if frames and ("select (selectors" in frames[-1] or "epoll" in frames[-1]):
            continue  # the event loop waiting for work is not CPU
        n = int(count)
        total += n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    lines = [f"  py-spy {path} — {total} busy samples; inclusive / self share:"]
    for title, table in (("inclusive", inclusive), ("self", own)):
        lines.append(f"  top {top} {title}:")
        for f, c in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"    {100 * c / max(total, 1):5.1f} %  {f}")
    return "\n".join(lines)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, str, float, float]]:
    """Every process: pid -> (parent pid, name, own CPU s, reaped children's CPU s)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        ppid, utime, stime, cutime, cstime = (int(fields[i]) for i in (1, 11, 12, 13, 14))
        table[int(entry.name)] = (ppid, name, (utime + stime) / _TICK, (cutime + cstime) / _TICK)
    return table


def _descendants(table: dict[int, tuple[int, str, float, float]], roots: list[int]) -> set[int]:
    found, todo = set(roots), list(roots)
    while todo:
        parent = todo.pop()
        for pid, (ppid, *_) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found & set(table)


def _affinity(cpus: set[int]) -> Callable[[int], None]:
    return lambda pid: os.sched_setaffinity(pid, cpus)


def _nice(value: int) -> Callable[[int], None]:
    return lambda pid: os.setpriority(os.PRIO_PROCESS, pid, value)


def _policy(policy: int) -> Callable[[int], None]:
    return lambda pid: os.sched_setscheduler(pid, policy, os.sched_param(0))


def _is_stack_service(name: str) -> bool:
    return name == "postgres" or name.startswith("redis-server")


def _box_busy_s() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK, sum(values[:8]) / _TICK


@dataclass
class CpuMeter:
    """CPU seconds per part of the stack over one measurement (Linux /proc): the server
    under test, PostgreSQL (backends that exited count through the postmaster), Redis, the
    load generator (this process's reaped children) and the whole box."""

    stack_root: int
    server_root: int | None = None
    start: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        table = _proc_table()
        parts = {"PostgreSQL": 0.0, "Redis": 0.0}
        for pid in _descendants(table, [self.stack_root]):
            _, name, own, reaped = table[pid]
            if name == "postgres":
                parts["PostgreSQL"] += own + reaped
            elif name.startswith("redis-server"):
                parts["Redis"] += own
        if self.server_root is not None:
            parts["API"] = 0.0
            for pid in _descendants(table, [self.server_root]):
                _, name, own, _ = table[pid]
                # `dev` runs PostgreSQL and Redis as its children: they are not the API.
                if not _is_stack_service(name):
                    parts["API"] += own
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        parts["generator"] = usage.ru_utime + usage.ru_stime
        parts["box busy"], parts["box"] = _box_busy_s()
        return parts

    def __enter__(self) -> CpuMeter:
        self.start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        self.used = {k: end[k] - self.start[k] for k in end}

    def per_op_ms(self, ops: int) -> dict[str, float]:
        """Milliseconds of CPU per operation by part, and the box's busy share in %."""
        out = {
            k: 1000 * v / max(ops, 1) for k, v in self.used.items() if k not in ("box", "box busy")
        }
        # Both come from /proc/stat ticks; rounding can put a fully busy box a hair over 100.
        out["box busy %"] = min(100.0, 100 * self.used["box busy"] / max(self.used["box"], 1e-9))
        return out


def _cpu_line(per_op: dict[str, float]) -> str:
    return ", ".join(
        f"{k} {v:.0f}" if k.endswith("%") else f"{k} {v:.3f}" for k, v in per_op.items() if v
    )


def _pickup_base() -> int:
    """The first pickup slot a checkout may ask for now: 10-15 minutes ahead."""
    return (int(time.time()) // 300 + 3) * 300


def _median(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


class Writeback:
    """The kernel's dirty-page writeback threshold, set for one run and put back after it.

    Why: PostgreSQL extends a table one zero-filled page at a time, and nothing flushes those
    pages, so ~1 MB/s of dirty page cache builds up under the checkout and the kernel writes it
    out at once when it is 30 s old (``dirty_expire_centisecs``). On this one-disk box each
    ~30 MB burst held up the WAL's fdatasync: an 80-90 ms stall every ~30 s at 450 checkouts/s.
    A small ``dirty_background_bytes`` makes the kernel write them out as they come (the usual
    advice for a PostgreSQL host; docs/PERFORMANCE.md). It is the machine's setting, not the
    app's, so the bench changes it only when asked (``--dirty-background-bytes``), says so in
    its machine line, and puts the old value back however the run ends.
    """

    def __init__(self, vm: Path = Path("/proc/sys/vm")) -> None:
        self.vm = vm
        self._saved: tuple[int, int] | None = None  # (ratio %, bytes); one of them is 0

    def _read(self, name: str) -> int:
        return int((self.vm / name).read_text())

    def describe(self) -> str:
        ratio, size = self._read("dirty_background_ratio"), self._read("dirty_background_bytes")
        background = f"{size} bytes" if size else f"{ratio} %"
        expire_s = self._read("dirty_expire_centisecs") / 100
        return f"writeback: dirty_background {background}, dirty_expire {expire_s:.0f} s"

    def apply(self, background_bytes: int) -> None:
        """Set ``dirty_background_bytes`` (the kernel then zeroes the ratio); refuses without
        the right to write it."""
        target = self.vm / "dirty_background_bytes"
        if not os.access(target, os.W_OK):
            raise SystemExit(f"bench: --dirty-background-bytes needs write access to {target}")
        self._saved = (self._read("dirty_background_ratio"), self._read("dirty_background_bytes"))
        target.write_text(str(background_bytes))

    def restore(self) -> None:
        """Put back whichever of the two was in force before :meth:`apply`."""
        if self._saved is None:
            return
        ratio, size = self._saved
        name, value = (
            ("dirty_background_bytes", size) if size else ("dirty_background_ratio", ratio)
        )
        (self.vm / name).write_text(str(value))
        self._saved = None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="regulars-bench-"))
        self.logdir = Path(args.reports) / "bench"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.results: dict[str, list[float]] = {}
        self.run_id = uuid.uuid4().hex[:8]
        self.started_at = time.time()

    def record(self, key: str, value: float) -> None:
        self.results.setdefault(key, []).append(value)

    def record_cpu(self, key: str, per_op: dict[str, float]) -> None:
        for part, value in per_op.items():
            self.record(f"{key}: {part}", value)

    # -- stack ---------------------------------------------------------------------------

    def up(self) -> None:
        self.dev_port = free_port()
        self.dev_url = f"http://127.0.0.1:{self.dev_port}"
        dev = start(
            "dev",
            [
                sys.executable,
                "-m",
                "server",
                "dev",
                "--data-dir",
                str(self.tmp),
                "--port",
                str(self.dev_port),
            ],
            self.logdir,
        )
        self.procs.append(dev)
        self.dev_pid = dev.popen.pid
        wait_healthy(self.dev_url, dev, 180)
        self.services = json.loads((self.tmp / "services.json").read_text())
        self.servers = [Server(s) for s in self.args.servers.split(",")]
        for server in self.servers:
            if server.spec == "dev":
                server.url = self.dev_url
                server.pids = [dev.popen.pid]
                continue
            parts = server.spec.split(":")
            kind, workers = parts[0], parts[1] if len(parts) > 1 else "1"
            # `serve` does not pass --data-dir on to its workers (see docs/PERFORMANCE.md), so
            # they would sign tokens with another secret: name the data dir explicitly.
            env = {"REGULARS_LOG_LEVEL": "warning", "REGULARS_DATA_DIR": str(self.tmp)}
            tree = server.options.get("tree")
            if tree:  # another checkout's code (a git worktree), against the same stack
                env["PYTHONPATH"] = tree
            for name, value in server.options.items():
                if name in BENCH_OPTIONS or name.startswith("pg."):
                    continue
                env[
                    f"REGULARS_DB_{name.upper()}_MAX"
                    if name == "pool"
                    else f"REGULARS_{name.upper()}"
                ] = value
            port = free_port()
            server.url = f"http://127.0.0.1:{port}"
            server.proc = start(
                f"serve-{kind}-{workers}-{port}",
                [
                    sys.executable,
                    "-m",
                    "server",
                    "serve",
                    "--data-dir",
                    str(self.tmp),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    workers,
                    "--server",
                    kind,
                ],
                self.logdir,
                env,
                cwd=tree,
            )
            self.procs.append(server.proc)
            wait_healthy(server.url, server.proc)
            server.pids = [server.proc.popen.pid]

    def down(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                proc.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def psql(self, sql: str) -> str:
        out = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.services["pg_port"]),
                "-U",
                "postgres",
                "-d",
                "regulars",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def prepare(self) -> None:
        from loadtests.setup_data import prepare

        n = self.args.guests
        data = asyncio.run(
            prepare(
                base_url=self.dev_url,
                guests=n,
                points=1_000_000,
                data_dir=str(self.tmp),
                concurrency=8,
            )
        )
        self.setup = data
        ids = dict(
            row.split("|")
            for row in self.psql(
                "SELECT sku || '|' || id FROM menu_items WHERE sku IN ('CAP', 'CRO')"
            ).splitlines()
        )
        self.items = [ids["CAP"], ids["CRO"]]
        raw = json.loads(data.to_json())
        raw["items"] = self.items
        self.setup_file = self.tmp / "setup.json"
        self.setup_file.write_text(json.dumps(raw))
        self.tokens_file = self.tmp / "tokens.txt"
        self.tokens_file.write_text("\n".join(g.token for g in data.guests) + "\n")
        # F1's own guests: only PostgreSQL sees their spends, so their Redis wallets are
        # dropped (an uncached wallet loads from PostgreSQL on next use; reconcile skips it).
        f1 = asyncio.run(
            prepare(
                base_url=self.dev_url,
                guests=n,
                points=1_000_000,
                data_dir=str(self.tmp),
                phone_start=50_000_000,
                concurrency=8,
            )
        )
        self.f1_guests = [g.id for g in f1.guests]
        values = ",".join(f"({i + 1}, '{g}')" for i, g in enumerate(self.f1_guests))
        self.psql(
            "CREATE SCHEMA IF NOT EXISTS bench; CREATE TABLE IF NOT EXISTS bench.f1_guests"
            f" (n int PRIMARY KEY, guest_id uuid NOT NULL); INSERT INTO bench.f1_guests VALUES {values}"
        )
        self.forget_f1_wallets()
        self.brand = self.psql("SELECT id FROM brands LIMIT 1")
        self.redeemed = self.psql(
            f"SELECT id FROM accounts WHERE brand_id = '{self.brand}' AND kind = 'redeemed'"
        )
        self.base_epoch = _pickup_base()
        (self.tmp / "checkout.sql").write_text(PGBENCH_SQL)
        (self.tmp / "checkout.lua").write_text(WRK_LUA + WRK_DONE)
        (self.tmp / "healthz.lua").write_text(WRK_DONE)
        self.prepare_pos()

    def prepare_pos(self) -> None:
        """The POS round's integration and key (the real CLI), its floor's guests (F1's, by
        phone, with their accounts) and scripts."""
        out = subprocess.run(
            [sys.executable, "-m", "server", "integration", "create", "--location-id",
             self.setup.location_id, "--data-dir", str(self.tmp)],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        created = json.loads(out.stdout.strip().splitlines()[-1])
        self.pos_integration = created["integration_id"]
        self.pos_key = (created["key_id"], created["secret"])
        self.psql(
            "CREATE TABLE IF NOT EXISTS bench.pos_guests (n int PRIMARY KEY, guest_id uuid,"
            " account_id uuid, phone text); INSERT INTO bench.pos_guests"
            " SELECT f.n, f.guest_id, a.id, g.phone_e164 FROM bench.f1_guests f"
            " JOIN guests g ON g.id = f.guest_id JOIN accounts a ON a.guest_id = f.guest_id;"
            # Regulars: a profile folded before (a first visit is taken in a transaction).
            " INSERT INTO guest_profiles (guest_id, weekday_counts, hour_counts, recent_visits)"
            " SELECT guest_id, array_fill(0, ARRAY[7]), array_fill(0, ARRAY[24]), '{}'"
            " FROM bench.pos_guests ON CONFLICT (guest_id) DO UPDATE SET"
            " weekday_counts = coalesce(guest_profiles.weekday_counts, EXCLUDED.weekday_counts),"
            " hour_counts = coalesce(guest_profiles.hour_counts, EXCLUDED.hour_counts),"
            " recent_visits = coalesce(guest_profiles.recent_visits, EXCLUDED.recent_visits)"
        )
        self.issued = self.psql(
            f"SELECT id FROM accounts WHERE brand_id = '{self.brand}' AND kind = 'issued'"
        )
        anonymous, named = pos_pgbench_scripts()
        (self.tmp / "pos_anonymous.sql").write_text(anonymous)
        (self.tmp / "pos_guest.sql").write_text(named)
        (self.tmp / "pos.lua").write_text(POS_WRK_LUA + WRK_DONE)
        from loadtests.pos_receipts import TillStream

        # No refunds: a refund sent before its sale committed (another connection) is a 422.
        # Exact replays (2 %) and late receipts (3 %) as a till sends them.
        self.pos_stream = TillStream(
            self.setup.location_id, self.setup.guests, random.Random(23), refund_p=0
        )
        self.pos_rate_guess = 1500.0

    def pos_requests(self, count: int) -> Path:
        """``count`` receipts signed now with the real scheme (shared/pos_signing.py), one
        ``<signature>\t<body>`` a line, for wrk to send in order."""
        from shared.pos_signing import SIGNATURE_HEADER, Signer

        # Signed a minute back, so that a replayed body's signature (one second later than
        # the last of that body) never lies in the future; the server allows five minutes.
        at = time.time() - 60
        signer = Signer(*self.pos_key, clock=lambda: at, sleep=lambda _s: None)
        path = self.tmp / "pos_requests.txt"
        with path.open("wb") as out:
            for _ in range(count):
                body = self.pos_stream.next().body
                out.write(signer.headers(body)[SIGNATURE_HEADER].encode() + b"\t" + body + b"\n")
        return path

    def _wait_for_backends_to_exit(self, application: str, timeout_s: float = 5.0) -> None:
        """A backend's CPU reaches its postmaster only once it has exited and been reaped;
        sampled earlier, it would be missing from this measurement and counted in the next."""
        deadline = time.monotonic() + timeout_s
        query = f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application}'"
        while self.psql(query) != "0" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # gone from pg_stat_activity, then reaped by the postmaster

    def forget_f1_wallets(self) -> None:
        """Drop F1's guests from Redis. pgbench holds points behind Redis's back, so a wallet
        of theirs that the app cached meanwhile (the worker's expiry pass voids their holds
        once a run outlasts the 15-minute payment window) is stale by design, not a fault."""
        import redis

        from server.loyalty.hot import wallet_keys

        r = redis.Redis.from_url(self.services["redis_url"])
        for g in self.f1_guests:
            r.delete(*wallet_keys(uuid.UUID(g)))
        r.close()

    # -- measurements ---------------------------------------------------------------------

    def pgbench(
        self, clients: int, scripts: tuple[str, ...] = ("checkout.sql",)
    ) -> tuple[float, dict[str, float]]:
        d = self.args.duration
        cmd = [
            str(PG_BIN / "pgbench"),
            "-n",
            "-M",
            "prepared",
            # A POS guest sale whose write met a concurrent change of the guest's profile
            # (40001) is read and written again, as the intake does (bounded there too).
            "--max-tries",
            "10",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(int(d)),
            *(arg for script in scripts for arg in ("-f", str(self.tmp / script))),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.services["pg_port"]),
            "-U",
            "postgres",
            "-D",
            f"nguests={len(self.f1_guests)}",
            "-D",
            f"nslots={SPREAD_SLOTS}",
            "-D",
            f"brand={self.brand}",
            "-D",
            f"redeemed={self.redeemed}",
            "-D",
            f"loc={self.setup.location_id}",
            "-D",
            f"item1={self.items[0]}",
            "-D",
            f"item2={self.items[1]}",
            "-D",
            f"base={self.base_epoch}",
            "-D",
            f"integ={getattr(self, 'pos_integration', '')}",
            "-D",
            f"key={getattr(self, 'pos_key', ('',))[0]}",
            "-D",
            f"issued={getattr(self, 'issued', '')}",
            "regulars",
        ]
        with CpuMeter(self.dev_pid) as cpu:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=d + 60)
            self._wait_for_backends_to_exit("pgbench")
        m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
        done = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
        # Exit 2: a client aborted on an error (say, a script the SQL no longer fits); the tps
        # of the clients left would pass for a floor.
        if out.returncode != 0 or not m or not done or (failed and int(failed.group(1))):
            raise RuntimeError(f"pgbench: {out.stdout[-1500:]} {out.stderr[-1500:]}")
        return float(m.group(1)), cpu.per_op_ms(int(done.group(1)))

    def wrk(
        self, url: str, script: str, conns: int, *args: str, server: Server | None = None
    ) -> dict[str, Any]:
        """One closed-loop wrk run; with ``server``, also its CPU per request by part."""
        d = self.args.duration
        cmd = [
            "wrk",
            "-t",
            "2",
            "-c",
            str(conns),
            "-d",
            f"{int(d)}s",
            "--timeout",
            "10s",
            "-s",
            str(self.tmp / script),
            url,
            "--",
            *args,
        ]
        root = server.pids[0] if server is not None and server.pids else None
        with CpuMeter(self.dev_pid, root) as cpu:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=d + 60)
        line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk: {out.stdout[-1500:]} {out.stderr[-1500:]}")
        res: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
        res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
        res["cpu"] = cpu.per_op_ms(res["requests"])
        return res

    def start_profile(
        self, server: Server, conns: int, what: str = "checkout"
    ) -> tuple[subprocess.Popen[bytes], Path] | None:
        """With ``--profile``: py-spy samples the server (all its worker processes) while
        the closed-loop run at ``conns`` connections goes on; see :func:`summarise_profile`."""
        if not self.args.profile:
            return None
        spy = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
        out = (
            Path(self.args.profile)
            / f"{what}-{server.label.replace(':', '-').replace('/', '_')}-c{conns}.txt"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [spy, "record", "--pid", str(server.pids[0]), "--subprocesses", "--rate", "250"]
        cmd += ["--duration", str(max(1, int(self.args.duration) - 1)), "--format", "raw"]
        cmd += ["--nonblocking", "--output", str(out)]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out

    def finish_profile(self, spy: tuple[subprocess.Popen[bytes], Path]) -> None:
        popen, out = spy
        popen.wait(60)
        if out.exists():
            log(summarise_profile(out))
        else:
            log(f"  py-spy wrote no profile (exit {popen.returncode}); is ptrace allowed?")

    def openloop(self, url: str, kind: str, rate: float) -> dict[str, Any]:
        cmd = [
            sys.executable,
            "-m",
            "loadtests.openloop",
            "--url",
            url,
            "--kind",
            kind,
            "--rate",
            f"{rate:.1f}",
            "--duration",
            str(self.args.duration),
            "--setup",
            str(self.setup_file),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=self.args.duration + 90)
        if out.returncode != 0:
            raise RuntimeError(f"openloop: {out.stderr[-1500:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    def round(self, n: int) -> None:
        order = self.servers if n % 2 == 0 else list(reversed(self.servers))
        parts = ["f1", "http"] if n % 2 == 0 else ["http", "f1"]
        suite = self.args.suite
        f1_best = 0.0
        f5_best: dict[str, float] = {}
        if suite in ("checkout", "pos"):
            parts.append("pos")
        for part in parts:
            if part == "pos":
                for server in order:
                    self.pos_round(n, server)
            if part == "f1" and suite == "checkout":
                f1 = {c: self.pgbench(c) for c in (8, 16)}
                for c, (tps, _) in f1.items():
                    self.record(f"F1 pgbench tps c={c}", tps)
                f1_best = max(tps for tps, _ in f1.values())
                self.record_cpu("F1 c=8 CPU ms per checkout", f1[8][1])
                log(
                    f"  round {n} F1 pgbench tps: "
                    + ", ".join(f"c={c} {v:.0f}" for c, (v, _) in f1.items())
                    + f" | CPU ms per checkout at c=8: {_cpu_line(f1[8][1])}"
                )
            if part == "http" and suite != "pos":
                for server in order:
                    f5_best[server.label] = self.http_round(n, server)
        # R1 pairs each F5 with the F1 of its own round, measured right before or right after
        # it (rounds alternate which comes first). An F1 from the round before was taken
        # minutes earlier, and the box's speed moves that much within a run.
        for label, best in f5_best.items():
            if f1_best and best:
                self.record(f"R1 = F5/F1 [{label}]", best / f1_best)
                log(f"  round {n} [{label}] R1 = {best:.0f} / {f1_best:.0f} = {best / f1_best:.3f}")

    def pos_round(self, n: int, server: Server) -> None:
        """POS intake: signed receipts per second at 8/16/32 connections (best) over the
        pgbench floor of a receipt's own SQL (2 anonymous sales to 1 with a guest, as the
        stream sends them), the two measured side by side (which goes first alternates)."""
        s = server.label
        floor_best = best = 0.0
        for step in ("floor", "http") if n % 2 == 0 else ("http", "floor"):
            if step == "floor":
                scripts = ("pos_anonymous.sql@2", "pos_guest.sql@1")
                floor = {c: self.pgbench(c, scripts) for c in (8, 16)}
                for c, (tps, _) in floor.items():
                    self.record(f"P1 pgbench receipt tps c={c}", tps)
                floor_best = max(tps for tps, _ in floor.values())
                self.record_cpu("P1 c=8 CPU ms per receipt", floor[8][1])
                log(
                    f"  round {n} P1 pgbench receipt tps: "
                    + ", ".join(f"c={c} {v:.0f}" for c, (v, _) in floor.items())
                    + f" | CPU ms per receipt at c=8: {_cpu_line(floor[8][1])}"
                )
                continue
            msg = f"  round {n} [{s}] P5"
            with self.stack_beside(server):
                for conns in (8, 16, 32):
                    count = int(self.pos_rate_guess * self.args.duration * 1.5) + 500
                    path = self.pos_requests(count)
                    spy = (
                        self.start_profile(server, conns, "pos") if n == 0 and conns == 16 else None
                    )
                    res = self.wrk(
                        server.url, "pos.lua", conns, str(path), self.pos_key[0], server=server
                    )
                    if spy is not None:
                        self.finish_profile(spy)
                    self.pos_rate_guess = max(self.pos_rate_guess, res["rps"])
                    if res["non2xx"] or res["socket_errors"]:
                        self.record("pos errors", res["non2xx"] + res["socket_errors"])
                    if conns == 16:
                        self.record_cpu(f"P5 c=16 CPU ms per receipt [{s}]", res["cpu"])
                        cpu_line = _cpu_line(res["cpu"])
                    self.record(f"P5 receipts/s c={conns} [{s}]", res["rps"])
                    self.record(f"P5 receipt p99 ms c={conns} [{s}]", res["p99_ms"])
                    best = max(best, res["rps"])
                    msg += f" c={conns} {res['rps']:.0f}/s p99 {res['p99_ms']:.0f} ms" + (
                        f" ({res['non2xx']} non-2xx)" if res["non2xx"] else ""
                    )
            log(msg)
            log(f"  round {n} [{s}] CPU ms per receipt at c=16: {cpu_line}")
        self.record(f"P5 receipts max /s [{s}]", best)
        if floor_best and best:
            self.record(f"R_pos = P5/P1 [{s}]", best / floor_best)
            log(
                f"  round {n} [{s}] R_pos = {best:.0f} / {floor_best:.0f} = {best / floor_best:.3f}"
            )

    def http_round(self, n: int, server: Server) -> float:
        """One server's HTTP measurements of round ``n``; returns its best F5 (0 without)."""
        with self.stack_beside(server):
            return self._http_round(n, server)

    @contextlib.contextmanager
    def stack_beside(self, server: Server) -> Iterator[None]:
        """For a server spec with ``cpus=``: the server's processes on those CPUs and the
        stack's PostgreSQL and Redis on the others while it is measured. With ``sched=batch``:
        PostgreSQL and Redis under SCHED_BATCH (a woken backend does not preempt the running
        API), ``sched=batch-all`` the server too. With ``pg.NAME=VALUE``: that PostgreSQL
        setting. F1 and other servers run with everything free to use every CPU, under the
        default policy and PostgreSQL's settings."""
        cpus = server.options.get("cpus")
        sched = server.options.get("sched")
        nice = server.options.get("nice")
        stack_moves = server.options.get("stack") != "free"
        everything = os.sched_getaffinity(0)
        mine = {int(c) for c in cpus.split(",")} if cpus else everything
        if cpus:
            self._each(server.pids, lambda _name: True, _affinity(mine))
            if stack_moves:
                self._each([self.dev_pid], _is_stack_service, _affinity(everything - mine))
        if nice:
            self._each(server.pids, lambda _name: True, _nice(int(nice)))
        if sched:
            self._each([self.dev_pid], _is_stack_service, _policy(os.SCHED_BATCH))
            if sched == "batch-all":
                self._each(server.pids, lambda _name: True, _policy(os.SCHED_BATCH))
        pg = {k[3:]: v for k, v in server.options.items() if k.startswith("pg.")}
        self._pg_settings(pg)
        try:
            yield
        finally:
            self._pg_settings(dict.fromkeys(pg))
            if cpus:
                self._each(server.pids, lambda _name: True, _affinity(everything))
                self._each([self.dev_pid], _is_stack_service, _affinity(everything))
            if nice:
                self._each(server.pids, lambda _name: True, _nice(0))
            if sched:
                self._each([self.dev_pid], _is_stack_service, _policy(os.SCHED_OTHER))
                self._each(server.pids, lambda _name: True, _policy(os.SCHED_OTHER))

    def _pg_settings(self, settings: Mapping[str, str | None]) -> None:
        """``ALTER SYSTEM`` each setting (None: back to the default), then reload. One psql
        call per statement: ALTER SYSTEM refuses to run inside a transaction block."""
        if not settings:
            return
        for name, value in settings.items():
            if not re.fullmatch(r"[a-z_]+", name):
                raise ValueError(f"not a PostgreSQL setting name: {name!r}")
            # The launcher's own settings come from postgres's command line, which outranks
            # ALTER SYSTEM: the override would silently change nothing.
            if self.psql(f"SELECT source FROM pg_settings WHERE name = '{name}'") == "command line":
                raise ValueError(f"pg.{name}: the stack sets it on postgres's command line")
            self.psql(
                f"ALTER SYSTEM RESET {name}"
                if value is None
                else f"ALTER SYSTEM SET {name} = '{value.replace(chr(39), chr(39) * 2)}'"
            )
        self.psql("SELECT pg_reload_conf()")

    @staticmethod
    def _each(roots: list[int], which: Callable[[str], bool], act: Callable[[int], None]) -> None:
        """``act`` on every process under ``roots`` whose name passes ``which`` (new
        PostgreSQL backends inherit the postmaster's affinity and policy)."""
        table = _proc_table()
        for pid in _descendants(table, roots):
            if which(table[pid][1]):
                with contextlib.suppress(ProcessLookupError):
                    act(pid)

    def _http_round(self, n: int, server: Server) -> float:
        s = server.label
        hz = self.wrk(server.url + "/healthz", "healthz.lua", 32)
        self.record(f"F4 healthz rps [{s}]", hz["rps"])
        self.record(f"F4 healthz p99 ms [{s}]", hz["p99_ms"])
        msg = f"  round {n} [{s}] F4 healthz {hz['rps']:.0f} rps p99 {hz['p99_ms']:.1f} ms"
        if self.args.suite != "checkout":
            log(msg)
            return 0.0
        best = 0.0
        for conns in (8, 16, 32):
            spy = self.start_profile(server, conns) if n == 0 and conns == 16 else None
            res = self.wrk(
                server.url,
                "checkout.lua",
                conns,
                str(self.tokens_file),
                self.setup.location_id,
                self.items[0],
                self.items[1],
                f"b{self.run_id}r{n}c{conns}{s}",
                str(SPREAD_SLOTS),
                # From now, not from the setup: in a long run the setup's first slots come
                # within the 5-minute lead time and their orders are refused (422).
                str(_pickup_base()),
                server=server,
            )
            if spy is not None:
                self.finish_profile(spy)
            if res["non2xx"] or res["socket_errors"]:
                self.record("checkout errors", res["non2xx"] + res["socket_errors"])
            if conns == 16:
                self.record_cpu(f"F5 c=16 CPU ms per checkout [{s}]", res["cpu"])
                cpu_line = _cpu_line(res["cpu"])
            self.record(f"F5 checkout rps c={conns} [{s}]", res["rps"])
            self.record(f"F5 checkout p99 ms c={conns} [{s}]", res["p99_ms"])
            best = max(best, res["rps"])
            msg += f" | F5 c={conns} {res['rps']:.0f} rps p99 {res['p99_ms']:.0f} ms" + (
                f" ({res['non2xx']} non-2xx)" if res["non2xx"] else ""
            )
        log(msg)
        log(f"  round {n} [{s}] CPU ms per checkout at c=16: {cpu_line}")
        self.record(f"F5 checkout max rps [{s}]", best)
        for pct in (30, 50, 75):
            rate = best * pct / 100
            co = self.openloop(server.url, "checkout", rate)
            hz = self.openloop(server.url, "healthz", rate)
            for k in ("p50_ms", "p95_ms", "p99_ms"):
                self.record(f"F6 checkout {k.replace('_ms', '')} ms @{pct}% [{s}]", co[k])
            self.record(f"F6 healthz p99 ms @{pct}% [{s}]", hz["p99_ms"])
            self.record(
                f"R4 = p99 checkout/healthz @{pct}% [{s}]", co["p99_ms"] / max(hz["p99_ms"], 0.01)
            )
            self.record(f"F6 generator send-lag p99 ms @{pct}%", co["send_lag_p99_ms"])
            self.record(f"F6 generator CPU % @{pct}%", co["generator_cpu_pct"])
            errs = sum(co["errors"].values()) + sum(hz["errors"].values())
            if errs:
                self.record("checkout errors", errs)
            log(
                f"  round {n} [{s}] F6 @{pct}% {rate:.0f}/s: checkout p50 {co['p50_ms']:.0f} "
                f"p95 {co['p95_ms']:.0f} p99 {co['p99_ms']:.0f} ms (achieved {co['achieved_rps']:.0f}/s, "
                f"lag p99 {co['send_lag_p99_ms']:.1f} ms, gen CPU {co['generator_cpu_pct']:.0f}%); "
                f"healthz p99 {hz['p99_ms']:.1f} ms; errors {errs}"
            )
        return best

    # -- correctness ----------------------------------------------------------------------

    def check(self) -> list[str]:
        time.sleep(1.0)  # let the last responses' Redis mirrors land
        problems: list[str] = []
        f1 = "(SELECT guest_id FROM bench.f1_guests)"
        q = {
            "orders": f"SELECT count(*) FROM orders WHERE guest_id NOT IN {f1} AND created_at >= to_timestamp({self.started_at})",
            "keys": "SELECT count(*) FROM idempotency_keys WHERE scope LIKE 'guest:%:orders' AND status_code = 201"
            f" AND created_at >= to_timestamp({self.started_at})",
            "distinct_ids": "SELECT count(DISTINCT convert_from(response, 'UTF8')::jsonb->>'id') FROM idempotency_keys"
            f" WHERE scope LIKE 'guest:%:orders' AND status_code = 201 AND created_at >= to_timestamp({self.started_at})",
            "keys_without_order": "SELECT count(*) FROM idempotency_keys k LEFT JOIN orders o ON o.id ="
            " (convert_from(k.response, 'UTF8')::jsonb->>'id')::uuid WHERE k.scope LIKE 'guest:%:orders'"
            " AND k.status_code = 201 AND o.id IS NULL",
            "unfinished_keys": "SELECT count(*) FROM idempotency_keys WHERE response IS NULL",
            "negative_spendable": "SELECT count(*) FROM accounts WHERE kind = 'guest'"
            " AND credits_posted - debits_posted - debits_pending < 0",
        }
        if self.args.suite == "pos":
            q = {}
        q["pos_unfinished_keys"] = "SELECT count(*) FROM receipt_keys WHERE response IS NULL"
        q["pos_keys_without_receipt"] = (
            "SELECT count(*) FROM receipt_keys k LEFT JOIN receipts r ON r.id = k.receipt_id"
            " AND r.occurred_at = k.occurred_at AND r.brand_id = k.brand_id WHERE r.id IS NULL"
        )
        got = {k: int(self.psql(v)) for k, v in q.items()}
        log(f"  correctness: {got}")
        for k in ("pos_unfinished_keys", "pos_keys_without_receipt"):
            if got[k]:
                problems.append(f"{k}: {got[k]}")
        if self.args.suite == "pos":
            got |= {"orders": 0, "keys": 0, "distinct_ids": 0}
        if not (got["orders"] == got["keys"] == got["distinct_ids"]):
            problems.append(
                f"orders {got['orders']} != keys {got['keys']} != distinct {got['distinct_ids']}"
            )
        for k in ("keys_without_order", "unfinished_keys", "negative_spendable"):
            if got.get(k):
                problems.append(f"{k}: {got[k]}")
        from server.loyalty.sql import LEDGER_CHECK

        ledger = self.psql(
            "SELECT string_agg(c.brand_sum || ',' || c.mismatched_balances || ',' || c.mismatched_holds, ';')"
            " FROM brands b, LATERAL (" + LEDGER_CHECK.replace("$1", "b.id") + ") c"
        )
        log(f"  ledger check (brand_sum, mismatched balances, mismatched holds): {ledger}")
        if any(part != "0,0,0" for part in ledger.split(";")):
            problems.append(f"ledger check {ledger}")
        self.forget_f1_wallets()
        rec = subprocess.run(
            [
                sys.executable,
                "-m",
                "server",
                "reconcile",
                "--grace-s",
                "0",
                "--data-dir",
                str(self.tmp),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        last = (rec.stdout.strip().splitlines() or ["?"])[-1]
        log(f"  reconcile: {last}")
        if last != "0 wallet(s) repaired":
            problems.append(f"reconcile: {rec.stdout[-800:]} {rec.stderr[-800:]}")
        errors = sum(self.results.get("checkout errors", []))
        if errors:
            problems.append(f"{errors:.0f} checkout requests failed (non-2xx or socket errors)")
        pos_errors = sum(self.results.get("pos errors", []))
        if pos_errors:
            problems.append(f"{pos_errors:.0f} POS receipts failed (non-2xx or socket errors)")
        return problems

    def machine(self) -> str:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        pg = subprocess.run(
            [str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True
        ).stdout.strip()
        wrk = subprocess.run(
            ["wrk", "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0]
        sync = self.psql("SHOW synchronous_commit") + "/fsync=" + self.psql("SHOW fsync")
        import granian
        import litestar
        import uvicorn

        return (
            f"nproc {os.cpu_count()}, RAM {mem:.0f} GiB, {platform.platform()}, Python "
            f"{platform.python_version()}, {pg}, synchronous_commit={sync}, {wrk.split(' [')[0]}, "
            f"litestar {litestar.__version__ if hasattr(litestar, '__version__') else '?'}, "
            f"granian {granian.__version__}, uvicorn {uvicorn.__version__}, "
            f"{Writeback().describe()}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3-second runs (< 3 min)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--guests", type=int, default=200)
    parser.add_argument(
        "--servers",
        default="uvicorn:1",
        help="servers under test, interleaved: uvicorn:1,granian:1,uvicorn:2:pool=20,"
        "uvicorn:1:cpus=1,dev",
    )
    parser.add_argument(
        "--suite",
        choices=["checkout", "healthz", "pos"],
        default="checkout",
        help="healthz: F4 only (e.g. uvicorn vs granian); pos: the POS round only",
    )
    parser.add_argument("--reports", default=str(HERE / "reports"))
    parser.add_argument("--json", help="write every sample here")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the servers during round 0's 16-connection checkout (or POS) run; raw stacks go to DIR",
    )
    parser.add_argument(
        "--dirty-background-bytes",
        type=int,
        metavar="N",
        help="set the kernel's vm.dirty_background_bytes for this run and restore it after "
        "(root; see Writeback)",
    )
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, say) unwinds like Ctrl-C: the stack stops, the host setting returns.
    on_term = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    writeback = Writeback()
    try:
        if args.dirty_background_bytes is not None:
            writeback.apply(args.dirty_background_bytes)
        return _run(args)
    finally:
        writeback.restore()
        signal.signal(signal.SIGTERM, on_term)


def _run(args: argparse.Namespace) -> int:
    if args.quick:
        args.rounds, args.duration, args.guests = 3, 3.0, min(args.guests, 100)
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (apt-get install -y wrk)")
    bench = Bench(args)
    t0 = time.monotonic()
    try:
        log(f"starting the stack in {bench.tmp} …")
        bench.up()
        log(f"machine: {bench.machine()}")
        bench.prepare()
        log(
            f"prepared {args.guests} HTTP guests + {args.guests} pgbench guests in {time.monotonic() - t0:.0f}s; "
            f"servers under test: {', '.join(s.label + ' ' + s.url for s in bench.servers)}"
        )
        for n in range(args.rounds):
            bench.round(n)
        problems = bench.check() if args.suite in ("checkout", "pos") else []
    finally:
        bench.down()
    log(
        f"\nsummary over {args.rounds} interleaved rounds of {args.duration:.0f}s runs "
        f"(median, min-max), {time.monotonic() - t0:.0f}s in all:"
    )
    for key, values in bench.results.items():
        if key in ("checkout errors", "pos errors"):
            continue
        med, lo, hi = _median(values)
        log(f"  {key:<48} {med:10.2f}   ({lo:.2f} - {hi:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(bench.results, indent=1))
    if problems:
        log("CORRECTNESS FAILED: " + "; ".join(problems))
    r1 = [v for k, v in bench.results.items() if k.startswith("R1 ")]
    if args.suite == "checkout" and r1:
        med, lo, hi = _median(r1[0])
        log(f"R1={med:.3f} (min {lo:.3f}, max {hi:.3f})")
    r_pos = [v for k, v in bench.results.items() if k.startswith("R_pos ")]
    if r_pos:
        med, lo, hi = _median(r_pos[0])
        log(f"R_pos={med:.3f} (min {lo:.3f}, max {hi:.3f})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
