"""The soak's traffic classes other than pass (which wrk sends), on one asyncio loop.

bench/soak.py runs `run(plan)` in a thread of its own. Every class is a loop bounded in count
and in time (`Plan.deadline`), paced at a fixed rate; each answer is checked against what its
case expects and tallied, so that a wrong status (a 500, a 200 where a 429 was due) fails the
soak. Outcomes are a status ("200"), "cut" (a head, then a body that ended early), "closed"
(the connection closed with no answer) or "hung" (no answer within the client's patience).
Standard library only; everything goes to 127.0.0.1.
"""

import asyncio
import json
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

PATIENCE = 10.0  # seconds a client waits for an answer before calling it "hung"
KEPT = 50  # unexpected answers kept with their details; the rest are only counted

# The policies' keys and limits, which soak.py writes into sluice's config.
PASS_KEYS = 100  # key-1 ... key-100, as bench/keys.lua sends them
BATCH_KEY, REJECT_KEY = "key-batch", "key-reject"
TIGHT_BURST, TIGHT_PER_MINUTE = 3, 2  # the `tight` policy: one key well over it is the reject class
MAX_BODY = 16 * 1024  # /v1/'s max_body


# ---------------------------------------------------------------------------- tally


class Tally:
    """Outcomes by class over the run and since the last `take`; the unexpected ones."""

    def __init__(self):
        self.lock = threading.Lock()
        self.total = Counter()  # (class, outcome)
        self.interval = Counter()  # outcome, since the last take()
        self.unexpected = []
        self.unexpected_count = 0
        self.interval_unexpected = 0
        self.retries = 0  # requests sent again after a kept-alive connection closed
        self.reject = None  # the reject class's admissions, for the closing check

    def record(self, cls, case, outcome, ok, detail="", n=1):
        with self.lock:
            self.total[(cls, outcome)] += n
            self.interval[outcome] += n
            if not ok:
                self.unexpected_count += n
                self.interval_unexpected += n
                if len(self.unexpected) < KEPT:
                    self.unexpected.append({"at": time.strftime("%H:%M:%S"), "class": cls,
                                            "case": case, "got": outcome, "detail": detail})

    def take(self):
        """The outcomes and unexpected count since the last call."""
        with self.lock:
            counts, self.interval = self.interval, Counter()
            bad, self.interval_unexpected = self.interval_unexpected, 0
        return counts, bad


# ---------------------------------------------------------------------------- HTTP/1.1


@dataclass
class Answer:
    status: int = None
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False
    keep: bool = False
    hung: bool = False

    @property
    def outcome(self):
        if self.status is None:
            return "hung" if self.hung else "closed"
        return str(self.status) if self.complete else "cut"


def request(method, path, key=None, body=None, ctype="application/json", extra=()):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"X-Api-Key: {key}"] if key else []
    if body is not None:
        lines += ([f"Content-Type: {ctype}"] if ctype else []) + [f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines + list(extra)) + "\r\n\r\n").encode() + (body or b"")


async def read_head(reader):
    """The answer's status line and fields; an empty Answer if the connection closed first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return Answer()
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return Answer(int(lines[0].split()[1]), headers,
                  keep=headers.get("connection", "").lower() != "close")


async def read_answer(reader):
    a = await read_head(reader)
    status, headers = a.status, a.headers
    try:
        if status is None:
            return a
        elif status in (204, 304):
            pass
        elif "chunked" in headers.get("transfer-encoding", ""):
            a.body = await read_chunked(reader)
        elif "content-length" in headers:
            a.body = await reader.readexactly(int(headers["content-length"]))
        else:
            a.body, a.keep = await reader.read(), False  # to the end of the connection
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        a.keep = False
        return a
    a.complete = True
    return a


async def read_chunked(reader):
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
        pass
    return body


async def connect(port, rcvbuf=None, limit=1 << 16):
    """A connection to 127.0.0.1:port; `rcvbuf` shrinks the socket's receive buffer first."""
    if rcvbuf is None:
        return await asyncio.open_connection("127.0.0.1", port, limit=limit)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=limit)


class Conn:
    """A kept-alive client connection, opened again whenever the last answer ended it."""

    def __init__(self, port, tally):
        self.port, self.tally, self.rw = port, tally, None

    def close(self):
        if self.rw:
            self.rw[1].close()
            self.rw = None

    async def send(self, raw, once=False):
        """`once`: on a connection of its own, closed after the answer."""
        for _ in range(2):
            reused = self.rw is not None and not once
            if not reused:
                self.close()
                self.rw = await connect(self.port)
            reader, writer = self.rw
            try:
                writer.write(raw)
                await writer.drain()
                a = await asyncio.wait_for(read_answer(reader), PATIENCE)
            except ConnectionError:
                a = Answer()
            except asyncio.TimeoutError:
                a = Answer(hung=True)
            if a.status is None and reused and not a.hung:
                # The server closed the kept-alive connection (its idle timeout) as we wrote.
                self.tally.retries += 1
                self.close()
                continue
            if once or not (a.complete and a.keep):
                self.close()
            return a
        return a


# ---------------------------------------------------------------------------- pacing


@dataclass
class Plan:
    port: int
    admin: int
    pid: int
    deadline: float  # time.monotonic() at which every class stops starting requests
    tally: Tally
    configs: list  # the reload class's (path, text) pairs, written in turn to the live path
    live: str  # the config file sluice was started with
    stop: threading.Event = field(default_factory=threading.Event)


RATES = {  # requests (or starts) per second, at most
    "pass-body": 4, "reject": 5, "batch": 1, "errors": 4, "faults": 2, "slow": 1,
    "reload": 1 / 30,
}
SLOW_AT_ONCE = 8  # slow clients running at the same time, at most


async def paced(plan, cls, one, start_after=0.0):
    """Calls `one(i)` at most RATES[cls] times a second until the deadline; each class is
    bounded in count too (its rate over the run, and some slack)."""
    period = 1 / RATES[cls]
    limit = int((plan.deadline - time.monotonic()) / period) + 2
    due = time.monotonic() + start_after
    await asyncio.sleep(start_after)
    for i in range(limit):
        if time.monotonic() >= plan.deadline or plan.stop.is_set():
            return
        await one(i)
        due += period
        await asyncio.sleep(max(0.0, due - time.monotonic()))


def expect(plan, cls, case, a, allowed, detail=""):
    ok = a.outcome in allowed
    detail = detail or (f"expected {'/'.join(sorted(allowed))}; body {a.body[:160]!r}"
                        if not ok else "")
    plan.tally.record(cls, case, a.outcome, ok, detail)
    return ok


# ---------------------------------------------------------------------------- classes


async def pass_body(plan):
    """Valid JSON bodies under the limits, small and near max_body: all 200."""
    conn = Conn(plan.port, plan.tally)
    small = json.dumps({"name": "Ada"}).encode()
    large = json.dumps({"items": ["x" * 100] * 100}).encode()  # about 10 KiB

    async def one(i):
        body = large if i % 4 == 3 else small
        a = await conn.send(request("POST", "/v1/candidates", f"key-{i % PASS_KEYS + 1}", body))
        expect(plan, "pass-body", "json", a, {"200"})

    await paced(plan, "pass-body", one)


async def reject(plan):
    """One key far over the `tight` policy: 429 with Retry-After, but for its burst and the
    tokens it earns. A 200 beyond burst + rate x elapsed (+1 for timing) is a limiter fault."""
    conn = Conn(plan.port, plan.tally)
    seen = {"first": None, "allowed": 0}

    async def one(i):
        a = await conn.send(request("GET", "/tight/items", REJECT_KEY))
        now = time.monotonic()
        seen["first"] = seen["first"] or now
        ok, detail = a.outcome == "429" and "retry-after" in a.headers, ""
        if a.outcome == "200":
            seen["allowed"] += 1
            due = TIGHT_BURST + TIGHT_PER_MINUTE * (now - seen["first"]) / 60 + 1
            ok = seen["allowed"] <= due
            detail = f"admission {seen['allowed']}, at most {due:.1f} due"
        elif a.outcome == "429" and not ok:
            detail = "429 without Retry-After"
        plan.tally.record("reject", "over-limit", a.outcome, ok, detail)

    await paced(plan, "reject", one)
    plan.tally.reject = dict(seen, last=time.monotonic())


BATCH = {"requests": [
    {"id": "a", "method": "GET", "path": "/v1/candidates"},
    {"id": "b", "method": "POST", "path": "/v1/candidates", "body": {"name": "Ada"}},
    {"id": "c", "method": "GET", "path": "/faults/unavailable"},
    {"id": "d", "method": "GET", "path": "/v1/reports", "depends_on": ["c"]},
    {"id": "e", "method": "GET", "path": "/v1/files", "depends_on": ["a", "b"]},
    {"id": "f", "method": "GET", "path": "/tight/items"},
]}
BATCH_ITEMS = {"a": {200}, "b": {200}, "c": {503}, "d": {424}, "e": {200}, "f": {200, 429}}


async def batch(plan):
    """A batch whose items pass, fail upstream (503), fail a dependency (424) and meet the
    tight limit: 207 with each item's status as due."""
    conn = Conn(plan.port, plan.tally)
    body = json.dumps(BATCH).encode()

    async def one(i):
        a = await conn.send(request("POST", "/batch", BATCH_KEY, body))
        ok, detail = a.outcome == "207", ""
        if ok:
            got = {r["id"]: r["status"] for r in json.loads(a.body)["responses"]}
            wrong = {k: v for k, v in got.items() if v not in BATCH_ITEMS.get(k, ())}
            ok = not wrong and len(got) == len(BATCH_ITEMS)
            detail = f"items {got}" if not ok else ""
        plan.tally.record("batch", "mixed", a.outcome, ok, detail)

    await paced(plan, "batch", one)


def chunked_head(path, key):
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Api-Key: {key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()


ERRORS = [  # name, request, whether on a connection of its own, outcomes allowed
    ("invalid-json", request("POST", "/v1/candidates", "key-1", b'{"name": "Ada"'), False, {"400"}),
    ("media-type", request("POST", "/v1/candidates", "key-1", b"name=Ada", "text/plain"),
     False, {"415"}),
    # Declared too large: answered before the body, which is never sent.
    ("too-large", request("POST", "/v1/candidates", "key-1", None,
                          extra=["Content-Type: application/json",
                                 f"Content-Length: {4 * MAX_BODY}"]), True, {"413"}),
    # Found too large while it arrives: one chunk over max_body, no last chunk.
    ("too-large-chunked", chunked_head("/v1/candidates", "key-1")
     + f"{MAX_BODY + 1024:x}\r\n".encode() + b"[" + b"1," * ((MAX_BODY + 1022) // 2) + b"1",
     True, {"413"}),
    ("unknown-key", request("GET", "/v1/candidates", "key-nobody"), False, {"401"}),
    ("no-key", request("GET", "/v1/candidates"), False, {"401"}),
    ("no-route", request("GET", "/nowhere", "key-1"), False, {"404"}),
    ("method", request("DELETE", "/v1/candidates", "key-1"), False, {"405"}),
    ("batch-not-json", request("POST", "/batch", BATCH_KEY, b"[1, 2"), False, {"400"}),
    ("batch-invalid", request("POST", "/batch", BATCH_KEY, b'{"requests": [{"id": "a"}]}'),
     False, {"422"}),
    ("batch-too-many", request("POST", "/batch", BATCH_KEY, json.dumps({"requests": [
        {"id": str(n), "method": "GET", "path": "/v1/x"} for n in range(30)]}).encode()),
     False, {"413"}),
    ("bad-head", b"GET /v1/candidates HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
     True, {"400"}),
]


async def errors(plan):
    """Requests sluice must refuse itself, one case after another."""
    conn = Conn(plan.port, plan.tally)

    async def one(i):
        name, raw, once, allowed = ERRORS[i % len(ERRORS)]
        expect(plan, "errors", name, await conn.send(raw, once), allowed)

    await paced(plan, "errors", one)


FAULTS = [  # path, outcomes allowed, what the body must be when complete
    ("/faults/reset-head", {"502"}, None),
    ("/faults/reset-body", {"cut"}, None),
    ("/faults/unavailable", {"503"}, b'{"fault":"unavailable"}'),  # the upstream's own answer
    ("/faults/stall", {"408"}, None),  # the route's request_timeout
    ("/faults/slow-head", {"200"}, None),
    ("/faults/slow-body", {"200"}, b"x" * 1000),
    ("/faults/drip", {"cut"}, None),  # cut off at the route's deadline, mid-body
    ("/faults/big?size=65536", {"200"}, None),
    ("/gone/items", {"502", "503"}, None),  # refused; then skipped for a second (503)
]


async def faults(plan):
    """Upstream faults, one after another: each must turn into its status, or cut answer."""
    conn = Conn(plan.port, plan.tally)

    async def one(i):
        path, allowed, body = FAULTS[i % len(FAULTS)]
        a = await conn.send(request("GET", path, "key-1"))
        wrong = body is not None and a.complete and a.body != body
        expect(plan, "faults", path, a, allowed if not wrong else set(),
               f"unexpected body {a.body[:80]!r}" if wrong else "")

    await paced(plan, "faults", one)


# ---------------------------------------------------------------------------- slow clients

# sluice's timeouts in the soak config, in seconds: what the slow clients must meet or exceed.
HEADER_READ, REQUEST, FAULT_REQUEST, BIG_REQUEST, IDLE = 3, 3, 1, 5, 4
HEAD = request("GET", "/v1/candidates", "key-2")
PADDED = request("POST", "/v1/candidates", "key-2", json.dumps({"pad": "x" * 1986}).encode())


async def trickled(plan, data, piece, gap):
    """Sends `data` `piece` bytes at a time, `gap` s apart, while waiting for the answer;
    stops sending once the answer has come (a 408, say)."""
    reader, writer = await connect(plan.port)
    answer = asyncio.ensure_future(asyncio.wait_for(read_answer(reader), PATIENCE))
    try:
        for k in range(0, len(data), piece):
            if answer.done():
                break
            writer.write(data[k:k + piece])
            await writer.drain()
            await asyncio.sleep(gap)
    except ConnectionError:
        pass  # the answer, if any, is still read below
    try:
        return await answer
    except asyncio.TimeoutError:
        return Answer(hung=True)
    finally:
        writer.close()


async def slow_reader(plan, size, piece, gap, wait=0.0):
    """Asks for `size` bytes with a small receive buffer, waits `wait` s, then takes the
    answer `piece` bytes at a time, `gap` s apart."""
    reader, writer = await connect(plan.port, rcvbuf=piece, limit=piece)
    try:
        writer.write(request("GET", f"/faults/big?size={size}", "key-3"))
        await writer.drain()
        await asyncio.sleep(wait)
        a = await asyncio.wait_for(read_head(reader), PATIENCE)
        length, got = int(a.headers.get("content-length", -1)), 0
        end = time.monotonic() + PATIENCE
        while a.status is not None and got < length and time.monotonic() < end:
            chunk = await asyncio.wait_for(reader.read(piece), PATIENCE)
            if not chunk:
                break
            got += len(chunk)
            await asyncio.sleep(gap)
        a.complete = got == length
        return a
    except ConnectionError:
        return Answer()  # reset before the head: as good as closed
    except asyncio.TimeoutError:
        return Answer(hung=True)
    finally:
        writer.close()


async def wait_close(reader, limit):
    """"closed" if the server closes within `limit` s (whatever it sent), else "hung"."""
    try:
        while await asyncio.wait_for(reader.read(1 << 16), limit):
            pass
        return Answer()
    except ConnectionError:
        return Answer()
    except asyncio.TimeoutError:
        return Answer(hung=True)


async def idle(plan, answered_first):
    """A connection that sends nothing (or nothing more after one answer) must be closed by
    sluice: after header_read_timeout, or idle_timeout."""
    reader, writer = await connect(plan.port)
    try:
        if answered_first:
            writer.write(HEAD)
            a = await asyncio.wait_for(read_answer(reader), PATIENCE)
            if a.outcome != "200":
                return a
        return await wait_close(reader, (IDLE if answered_first else HEADER_READ) + 3)
    finally:
        writer.close()


SLOW = [  # name, client, outcomes allowed
    ("trickled-head", lambda p: trickled(p, HEAD, 1, 0.01), {"200"}),  # ~0.8 s, in time
    ("slowloris", lambda p: trickled(p, HEAD, 1, 0.25), {"408"}),  # ~20 s: past HEADER_READ
    ("slow-body", lambda p: trickled(p, PADDED, 100, 0.05), {"200"}),  # ~1 s, in time
    ("too-slow-body", lambda p: trickled(p, PADDED, 100, 0.4), {"408"}),  # ~9 s: past REQUEST
    # 1 MiB at about 800 KB/s, within BIG_REQUEST.
    ("slow-reader", lambda p: slow_reader(p, 1 << 20, 8192, 0.01), {"200"}),
    # Takes nothing for longer than IDLE and BIG_REQUEST: sluice lets it go mid-answer.
    ("non-reader", lambda p: slow_reader(p, 8 << 20, 4096, 0, wait=BIG_REQUEST + 2), {"cut"}),
    ("idle", lambda p: idle(p, False), {"closed"}),
    ("idle-after-answer", lambda p: idle(p, True), {"closed"}),
]


async def slow(plan):
    """Starts one slow client a second, in turn, at most SLOW_AT_ONCE running."""
    room = asyncio.Semaphore(SLOW_AT_ONCE)
    running = set()

    async def client(name, run, allowed):
        try:
            expect(plan, "slow", name, await run(plan), allowed)
        except Exception as e:  # noqa: BLE001 - a client's own failure is a finding too
            plan.tally.record("slow", name, "error", False, repr(e))
        finally:
            room.release()

    async def one(i):
        await room.acquire()
        task = asyncio.create_task(client(*SLOW[i % len(SLOW)]))
        running.add(task)
        task.add_done_callback(running.discard)

    await paced(plan, "slow", one)
    await asyncio.gather(*running)  # each ends within its own limit (PATIENCE and less)


# ---------------------------------------------------------------------------- reloads


async def metrics(admin):
    """The reload counters and the hash of the config in force, from /metrics."""
    a = await admin.send(request("GET", "/metrics"))
    text = a.body.decode()

    def count(result):
        m = re.search(rf'^sluice_config_reloads_total{{result="{result}"}} (\d+)', text, re.M)
        return int(m.group(1)) if m else -1

    m = re.search(r'^sluice_config_info\{hash="([0-9a-f]+)"\}', text, re.M)
    return {"success": count("success"), "failure": count("failure"),
            "hash": m.group(1) if m else None}


def write_config(path, text):
    """Replaced at once (a rename), so a reload never reads half a file."""
    with open(path + ".new", "w") as f:
        f.write(text)
    os.replace(path + ".new", path)


async def reload(plan):
    """Every 30 s the other of two valid configs, by POST /reload and SIGHUP in turn; each
    must be taken (one more success, no failure) and put its own hash in force."""
    admin = Conn(plan.admin, plan.tally)
    hashes = {}

    async def one(i):
        name, text = plan.configs[(i + 1) % 2]  # the first is in force at the start
        write_config(plan.live, text)
        before = await metrics(admin)
        how = "post" if i % 2 == 0 else "sighup"
        if how == "post":
            a = await admin.send(request("POST", "/reload"))
            detail = "" if a.outcome == "200" else f"/reload answered {a.outcome}: {a.body[:200]!r}"
        else:
            os.kill(plan.pid, signal.SIGHUP)
            detail = ""
        after = before
        for _ in range(30):  # SIGHUP is handled in the background: up to 3 s
            after = await metrics(admin)
            if after["success"] != before["success"] or after["failure"] != before["failure"]:
                break
            await asyncio.sleep(0.1)
        taken = after["success"] == before["success"] + 1 and after["failure"] == before["failure"]
        same = hashes.setdefault(name, after["hash"]) == after["hash"] != before["hash"]
        if not (taken and same):
            detail = detail or f"before {before}, after {after}, {name} had {hashes[name]}"
        plan.tally.record("reload", how, "ok" if not detail else "failed", not detail, detail)

    await paced(plan, "reload", one, start_after=1 / RATES["reload"])


# ---------------------------------------------------------------------------- the loop

CLASSES = [pass_body, reject, batch, errors, faults, slow, reload]


async def main(plan):
    results = await asyncio.gather(*(c(plan) for c in CLASSES), return_exceptions=True)
    for c, r in zip(CLASSES, results):
        if isinstance(r, BaseException):  # the class stopped early: sluice gone, most likely
            plan.tally.record(c.__name__.replace("_", "-"), "stopped", "error", False, repr(r))


def run(plan):
    """Every class at once until the plan's deadline; returns when the last has ended."""
    asyncio.run(main(plan))
