#!/usr/bin/env python3
"""Load benchmark: sluice against nginx and HAProxy as rate-limiting reverse proxies.

Everything runs on 127.0.0.1: an upstream (nginx, 1 worker, a small JSON body), and in front of
it sluice, nginx (limit_req keyed by X-Api-Key) and HAProxy (a stick table keyed by X-Api-Key).
wrk loads each proxy in turn (A B C, A B C, ...) with a Lua script rotating X-Api-Key over N
keys; the table gives per proxy the median req/s, p50 and p99 over the rounds, sluice's ratio
to each peer (of the medians, and the median of the rounds' own ratios), and the proxy's CPU
time per request split into user and kernel (system) time.
The pass table also has a `direct` row, wrk straight to the upstream: the most this box can do
without a proxy in the way (its CPU column is the upstream's).

Scenarios:
  pass     limits far above the load, 1000 keys: everything is proxied (most answers 200)
  reject   the published default (burst 100, 1/s, 100 per 60 s) over 10 keys: nearly all 429
  manykeys 1M distinct keys over one run per proxy; RSS of each proxy before and after
  tls      pass over HTTPS, 1 worker: keep-alive, then handshake-heavy (when named; --smoke too)

With tls, each proxy terminates TLS with the same ECDSA P-256 certificate, made here with
openssl (TLS 1.2 and 1.3 offered, ALPN h2 and http/1.1; wrk offers no ALPN, so it speaks
HTTP/1.1 over TLS 1.3); the upstream is the same plain-HTTP one. Two tables: keep-alive (wrk
keeps its connections, as in pass) and handshake-heavy (`Connection: close` on every request,
--tls-connections connections: a new TCP connection and TLS handshake per request). Each proxy
keeps its default session resumption (nginx: tickets, no session cache; HAProxy: tickets and
its cache; sluice: rustls's stateful tickets), and wrk offers the session of the connection it
replaces, so a handshake there is a resumed one (TLS 1.3 PSK with a fresh X25519 exchange, no
certificate signature). wrk's latency starts when the request is written, after the handshake:
the handshake shows in req/s and CPU, hardly in p50 and p99. Its side of a handshake costs
wrk (OpenSSL 3) more CPU than the proxy's side costs the proxy, so with --pin req/s is wrk's
limit there and the proxies' CPU per request is the comparison. Below each table: TCP
connections accepted per request (on this machine: the proxy's to the upstream count too),
wrk's socket errors and its own CPU per request; after the first, what a client like wrk gets
from each proxy (version, cipher, whether a second connection resumed the first's session,
whether the answer to `Connection: close` says it closes). The run fails unless every proxy
gets the same, and unless handshake-heavy makes a connection per request.

With --stores, instead: where sluice keeps its limiter state, on pass and reject, 1 worker.
`sluice` keeps it in memory (the baseline of the ratios), `sluice-redis-exact` and
`sluice-redis-lease` in one redis-server started here (sync = "exact", and "lease" of 10
tokens for 250 ms), beside nginx. Each proxy runs only for its own turn, and Redis is emptied
(FLUSHALL) before each turn. A second table gives per Redis target the script calls Redis
counted (`cmdstat_evalsha`) per request wrk sent, sluice's own store metrics per request
(calls, failed calls and fallback checks, refusals held and leased tokens spent locally),
Redis's CPU time per request, and the keys in Redis after the last run with the size of one
(`MEMORY USAGE`). A closing check line compares with the targets for a shared store: lease
pass req/s at least 0.9 of memory's; exact pass p99 at most 1 ms above memory's; exact reject
req/s (refusals held locally) at least 0.9 of memory's. It informs; it does not fail the run.

  bench/setup.sh                 # nginx, haproxy, wrk, redis-server from Debian packages
  bench/run.py                   # full run: 1 and 2 workers, pass + reject, then manykeys
  bench/run.py --workers 1 --pin # each proxy alone on CPU 1; wrk and the upstream on CPU 0
  bench/run.py --stores --pin    # memory against Redis stores; Redis pinned with wrk, CPU 0
  bench/run.py --scenarios tls --workers 1 --pin   # the TLS tables alone
  bench/run.py --smoke           # CI: 1 worker, one round of 2 s per proxy, few keys; asserts
                                 # (the TLS tables too, and then the stores tables if
                                 # redis-server is installed)
Every process started here is stopped on exit (also on Ctrl-C or SIGTERM).
"""

import argparse
import math
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = '{"id":42,"name":"Ada Lovelace","status":"active"}'
PASS_RATE = 1_000_000  # requests per second per key: far above anything wrk sends here

children = []  # Popen objects, each the leader of its own process group
# With --pin: the CPUs of the proxy under test, and of the load (wrk and the upstream).
PIN = {"proxy": None, "load": None}


def pinned(cmd, role):
    cpus = PIN[role]
    return ["taskset", "-c", cpus] + cmd if cpus else cmd


def start(cmd, log, role="proxy", **kw):
    out = open(log, "ab")
    p = subprocess.Popen(pinned(cmd, role), stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True, **kw)
    children.append(p)
    return p


def stop(p):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    if p in children:
        children.remove(p)


def stop_all(*_):
    for p in list(children):
        stop(p)
    if _:
        sys.exit(130)


def wait_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process {proc.args[0]} exited early (code {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def check_free(port):
    with socket.socket() as s:
        # As the servers bind: a connection of an earlier run in TIME_WAIT is no obstacle.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise SystemExit(f"port 127.0.0.1:{port} is taken; pass --port-base")


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
                total += int(m.group(1)) if m else 0
        except FileNotFoundError:
            pass
    return total


def cpu_seconds(pids):
    """User and system CPU time of the processes, in seconds."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                user += int(fields[11])  # utime
                system += int(fields[12])  # stime
        except FileNotFoundError:
            pass
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def passive_opens():
    """TCP connections accepted on this machine so far (its network namespace)."""
    with open("/proc/net/snmp") as f:
        names, values = (line.split() for line in f if line.startswith("Tcp:"))
    return int(values[names.index("PassiveOpens")])


def group_pids(p):
    """The leader and every process of its group (nginx's workers)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getpgid(int(d)) == p.pid:
                    pids.append(int(d))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


# ---------------------------------------------------------------------------- configurations


def nginx_head(name, workers, work):
    """What the upstream's and the proxy's nginx configs share, up to inside `http {`."""
    return f"""
worker_processes {workers};
daemon off;
user root;
pid {work}/{name}.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
  uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;"""


def upstream_conf(port, work):
    return nginx_head("upstream", 1, work) + f"""
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{BODY}'; }}
  }}
}}
"""


def nginx_conf(port, up, workers, work, scenario, tls=None):
    # 1r/s burst=100 nodelay is the published default's token bucket; nginx has no rolling
    # window, so the 60-s window is left out (in the reject scenario it changes nothing).
    rate, burst = (f"{PASS_RATE}r/s", PASS_RATE) if scenario == "pass" else ("1r/s", 100)
    zone = "160m" if scenario == "manykeys" else "16m"
    listen = f"127.0.0.1:{port} reuseport"
    if tls:
        # nginx 1.22's `listen ... http2` (1.25.1 on: `http2 on;`); its default protocols
        # stop at TLS 1.2, so 1.3 is named. Session cache: the default (none); tickets: on.
        listen = f"""127.0.0.1:{port} ssl http2 reuseport;
    ssl_certificate {tls['cert']};
    ssl_certificate_key {tls['key']};
    ssl_protocols TLSv1.2 TLSv1.3"""
    return nginx_head("nginx", workers, work) + f"""
  limit_req_zone $http_x_api_key zone=keys:{zone} rate={rate};
  limit_req_status 429;
  upstream api {{
    server 127.0.0.1:{up};
    keepalive 256;
    keepalive_requests 10000000;
  }}
  server {{
    listen {listen};
    location / {{
      limit_req zone=keys burst={burst} nodelay;
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Request-Id $request_id;
      add_header X-Request-Id $request_id always;
    }}
  }}
}}
"""


def haproxy_conf(port, up, workers, scenario, tls=None):
    # A stick table counts requests per key over a period; no token bucket. Reject: at most
    # 100 per 60 s (the published window); pass: a limit nothing reaches.
    limit = 10 * PASS_RATE if scenario == "pass" else 100
    size = "2m" if scenario == "manykeys" else "100k"
    # With TLS: certificate and key in one file; HAProxy's defaults for the rest (TLS 1.2
    # and 1.3, tickets and a session cache).
    bind = f"127.0.0.1:{port}" + (f" ssl crt {tls['pem']} alpn h2,http/1.1" if tls else "")
    return f"""
global
  nbthread {workers}
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 75s
  timeout server 60s
  timeout http-keep-alive 75s
  option http-keep-alive
  http-reuse always
frontend proxy
  bind {bind}
  stick-table type string len 64 size {size} expire 60s store http_req_rate(60s)
  http-request track-sc0 req.hdr(x-api-key)
  http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {limit} }}
  option forwardfor
  http-request set-header X-Forwarded-Proto {"https" if tls else "http"}
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Real-IP %[src]
  unique-id-format %{{+X}}o%[rand,hex]%[rand,hex]
  unique-id-header X-Request-Id
  http-after-response set-header X-Request-Id %[unique-id]
  default_backend api
backend api
  server up 127.0.0.1:{up} maxconn 1024
"""


def sluice_conf(port, admin, up, workers, scenario, store="", tls=None):
    """`store`: a `[store]` table (`store_table`); none keeps the limiter state in memory.
    `tls`: the certificate files (`tls_files`) for a `[server.tls]` table."""
    if scenario == "pass":
        policy = f'[policies.default]\nrate = "{PASS_RATE}/s"\nburst = {PASS_RATE}\nkey = "api_key"\n'
    else:
        policy = ""  # the built-in default: the published rule, keyed by the presented key
    return f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = {workers}
max_keys = 2000000
access_log = false  # as for nginx and HAProxy here: no access log
{server_tls_table(tls) if tls else ""}
[upstreams.api]
targets = ["http://127.0.0.1:{up}"]

{policy}{store}"""


def server_tls_table(tls):
    return f"""
[server.tls]
cert = "{tls['cert']}"
key = "{tls['key']}"
alpn = ["h2", "http/1.1"]
"""


def tls_files(work):
    """An ECDSA P-256 certificate for 127.0.0.1, its key, and both in one file (HAProxy's)."""
    files = {k: os.path.join(work, f"{name}.pem")
             for k, name in (("cert", "cert"), ("key", "key"), ("pem", "cert-key"))}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", files["key"], "-out", files["cert"], "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with open(files["pem"], "w") as out:
        for k in ("cert", "key"):
            with open(files[k]) as f:
                out.write(f.read())
    return files


def store_table(sync, redis_port):
    lease = 'lease = 10\nlease_ttl = "250ms"\n' if sync == "lease" else ""
    return f"""
[store]
kind = "redis"
url = "redis://127.0.0.1:{redis_port}/0"
key_secret = "bench"
timeout = "20ms"
sync = "{sync}"
{lease}"""


# ---------------------------------------------------------------------------- running


class Target:
    def __init__(self, name, port, launch, proc=None):
        """`launch` starts the target; None for one already running (`proc`)."""
        self.name, self.port, self.launch, self.proc = name, port, launch, proc

    def up(self):
        if self.launch:
            self.proc = self.launch()
            wait_port(self.port, self.proc)
            time.sleep(0.3)

    def down(self):
        if self.proc and self.launch:
            stop(self.proc)
            self.proc = None

    def rss(self):
        return rss_kib(group_pids(self.proc))

    def load(self, keys, seconds, conns, **kw):
        """One wrk run; adds the proxy's CPU time per request, which other load on the
        machine disturbs much less than throughput, and the TCP connections accepted."""
        pids = group_pids(self.proc)
        before, opens = cpu_seconds(pids), passive_opens()
        r = wrk(self.port, keys, seconds, conns, **kw)
        after = cpu_seconds(pids)
        r["accepted"] = passive_opens() - opens
        per_request = 1e6 / max(1, r["total"])
        r["user_us"] = (after[0] - before[0]) * per_request
        r["sys_us"] = (after[1] - before[1]) * per_request
        r["cpu_us"] = r["user_us"] + r["sys_us"]
        return r


SYNCS = ("exact", "lease")  # the Redis targets of the stores tables: sluice-redis-<sync>


def targets(args, work, scenario, workers, ports, upstream=None, redis_port=None, tls=None):
    """With `redis_port`, the stores tables' targets: sluice with each store, and nginx.
    With `tls` (`tls_files`), the proxies terminate TLS."""
    up, s_port, n_port, h_port, admin = ports
    sluice = os.path.join(ROOT, "target", "release", "sluice")
    files = {
        "sluice.toml": sluice_conf(s_port, admin, up, workers, scenario, tls=tls),
        "nginx.conf": nginx_conf(n_port, up, workers, work, scenario, tls),
        "haproxy.cfg": haproxy_conf(h_port, up, workers, scenario, tls),
    }
    for sync in SYNCS if redis_port else ():
        files[f"sluice-redis-{sync}.toml"] = sluice_conf(
            s_port, admin, up, workers, scenario, store_table(sync, redis_port))
    for name, text in files.items():
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    env = dict(os.environ, SLUICE_LOG="warn")

    def sluice_at(binary, conf="sluice"):
        return lambda: start([binary, "--config", f"{work}/{conf}.toml"], f"{work}/{conf}.log",
                             env=env)

    nginx = Target("nginx", n_port, lambda: start(
        ["nginx", "-p", work, "-e", f"{work}/nginx.err", "-c", f"{work}/nginx.conf"],
        f"{work}/nginx.log"))
    if redis_port:
        # The sluices take turns on one port; the stores tables leave HAProxy out.
        return [Target("sluice", s_port, sluice_at(sluice))] + [
            Target(f"sluice-redis-{sync}", s_port, sluice_at(sluice, f"sluice-redis-{sync}"))
            for sync in SYNCS] + [nginx]
    # Other builds of sluice (before/after an optimization) take the same port in turn.
    variants = [Target(name, s_port, sluice_at(path)) for name, path in args.variant]
    direct = [Target("direct", up, None, upstream)] if upstream and scenario == "pass" else []
    return variants + direct + [
        Target("sluice", s_port, sluice_at(sluice)),
        nginx,
        Target("haproxy", h_port, lambda: start(
            ["haproxy", "-db", "-f", f"{work}/haproxy.cfg"], f"{work}/haproxy.log")),
    ]


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


KEYS_LUA = os.path.join(ROOT, "bench", "keys.lua")


def wrk(port, keys, seconds, conns, first=0, scheme="http", script=KEYS_LUA):
    """The result keeps wrk's whole output as `output`, for what a script prints itself."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s",
           "-s", script, f"{scheme}://127.0.0.1:{port}/v1/candidates",
           "--", str(keys), str(first)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(pinned(cmd, "load"), capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)

    def latency(pct):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")

    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (total and rps):
        raise SystemExit(f"could not read wrk's output:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "p50": latency(50),
        "p99": latency(99),
        "total": int(total.group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": "Socket errors" in out,
        "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0,
        # wrk's own CPU time (user + sys) per request: whether the load generator is the limit.
        "wrk_us": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                  * 1e6 / max(1, int(total.group(1))),
        "output": out,
    }


def run_table(args, work, scenario, workers, ports, upstream, tls=None, script=KEYS_LUA,
              conns=None, title=None):
    """With `tls`, over HTTPS with `script` for wrk; each proxy's TLS is probed after its
    warm-up (`tls_probe`), into its medians' `tls`."""
    keys = 1000 if scenario == "pass" else 10
    conns = conns or args.connections
    ts = targets(args, work, scenario, workers, ports, upstream, tls=tls)
    load = {"scheme": "https" if tls else "http", "script": script}
    # With variants sharing sluice's port, each proxy runs only for its own turn.
    each_turn = bool(args.variant)
    runs = {t.name: [] for t in ts}
    probes = {}

    def warm_up(t):
        wrk(t.port, keys, 1, conns, **load)  # connections, pools, keys
        if tls and t.name not in probes:
            probes[t.name] = tls_probe(t.port)

    try:
        if not each_turn:
            for t in ts:
                t.up()
                warm_up(t)
        for _ in range(args.rounds):
            for t in ts:
                if each_turn:
                    t.up()
                    warm_up(t)
                runs[t.name].append(t.load(keys, args.seconds, conns, **load))
                if each_turn:
                    t.down()
    finally:
        for t in ts:
            t.down()
    med = summarize(scenario, workers, runs, title)
    for name, probe in probes.items():
        med[name]["tls"] = probe
    return med


def summarize(scenario, workers, runs, title=None):
    """`title`: what the table is, when not the usual proxies side by side."""
    med = {}
    for name, rs in runs.items():
        med[name] = {k: statistics.median(r[k] for r in rs)
                     for k in ("rps", "p50", "p99", "cpu_us", "user_us", "sys_us", "wrk_us")}
        total = max(1, sum(r["total"] for r in rs))
        med[name]["total"] = total
        med[name]["ok"] = 1 - sum(r["non2xx"] for r in rs) / total
        med[name]["accepted"] = sum(r["accepted"] for r in rs) / total
        med[name]["socket_errors"] = sum(r["socket_errors"] for r in rs)
        med[name]["all_rps"] = [round(r["rps"]) for r in rs]
    title = title or f"{scenario}, {workers} worker(s)"
    print(f"\n### {title}: median of {len(runs['sluice'])} rounds\n")
    # Two ratios: of the medians, and the median of each round's own ratio. The proxies of a
    # round run one after the other, so a slow spell of the machine that spans a round
    # cancels out of the second; it is the steadier of the two on a noisy machine.
    print("| proxy | req/s | p50 ms | p99 ms | 2xx share | sluice/peer req/s "
          "| sluice/peer per round | CPU µs/req (user + sys) | rounds req/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in med.items():
        ratio = paired = ""
        if name != "sluice":
            ratio = f"{med['sluice']['rps'] / m['rps']:.2f}"
            rounds = zip(runs["sluice"], runs[name])
            each = [s["rps"] / r["rps"] if r["rps"] else math.inf for s, r in rounds]
            paired = f"{statistics.median(each):.2f}"
        print(f"| {name} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | "
              f"{m['ok']:.3f} | {ratio} | {paired} | "
              f"{m['cpu_us']:.1f} ({m['user_us']:.1f} + {m['sys_us']:.1f}) | "
              f"{' '.join(map(str, m['all_rps']))} |")
    sys.stdout.flush()
    return med


CLOSE_LUA = """-- bench/keys.lua, and `Connection: close` on every request: a connection each.
dofile("{keys}")
local keyed = request
function request()
   return keyed():sub(1, -3) .. "Connection: close\\r\\n\\r\\n"
end
"""


def tls_probe(port):
    """What a client like wrk (OpenSSL's defaults, no ALPN) gets: the TLS version and cipher,
    whether a second connection offering the first's session resumed it, and whether the
    answer to a request with `Connection: close` said it closes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    session = None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, session=session) as s:
            s.sendall(b"GET /v1/candidates HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Api-Key: key-1\r\n"
                      b"Connection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):  # to the end: the tickets come after the handshake
                reply += chunk
            session, resumed = s.session, s.session_reused
            version, cipher = s.version(), s.cipher()[0]
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    return {"version": version, "cipher": cipher, "resumed": resumed,
            "status": int(head.split()[1]) if head else 0,
            "says close": b"\r\nconnection: close" in head}


def run_tls(args, work, ports):
    """The two TLS tables, 1 worker: keep-alive, then handshake-heavy. No `direct` row: the
    upstream speaks plain HTTP."""
    tls = tls_files(work)
    close = os.path.join(work, "close.lua")
    with open(close, "w") as f:
        f.write(CLOSE_LUA.format(keys=KEYS_LUA))
    failures = []
    for mode, script, conns in (("keep-alive", KEYS_LUA, args.connections),
                                ("handshake-heavy", close, args.tls_connections)):
        title = f"tls {mode}, 1 worker, wrk -c{conns}"
        med = run_table(args, work, "pass", 1, ports, None, tls, script, conns, title)
        # Connections: wrk's, and the proxy's to the upstream (it should keep those).
        print(f"\n{mode}: TCP connections accepted per request, wrk's socket errors, wrk's own "
              "CPU per request\n")
        print("| proxy | connections/req | wrk socket errors | wrk CPU µs/req |")
        print("|---|---|---|---|")
        for name, m in med.items():
            print(f"| {name} | {m['accepted']:.3f} | {m['socket_errors']} | {m['wrk_us']:.1f} |")
        if mode == "keep-alive":
            print("\nTLS as a client like wrk gets it (OpenSSL's defaults, no ALPN; a second "
                  "connection offers the first's session)\n")
            print("| proxy | version | cipher | resumed | status | says close |")
            print("|---|---|---|---|---|---|")
            for name, m in med.items():
                print(f"| {name} | " + " | ".join(map(str, m["tls"].values())) + " |")
        sys.stdout.flush()
        failures += [f"tls {mode} {f}" for f in check_tls(mode, med)]
    return failures


def run_manykeys(args, work, ports):
    keys = args.many_keys
    ts = targets(args, work, "manykeys", 1, ports)
    print(f"\n### many keys: {keys} distinct keys, one run per proxy, 1 worker\n")
    print("| proxy | RSS idle MiB | RSS after MiB | req/s | distinct keys seen | 2xx share |")
    print("|---|---|---|---|---|---|")
    result = {}
    for t in ts:
        t.up()
        try:
            idle = t.rss()
            r = {"total": 0, "non2xx": 0, "seconds": 0.0}
            # In runs of a few seconds, each starting at the next new key, until every key
            # has been sent once or the time is up.
            while r["total"] < keys and r["seconds"] < args.many_seconds:
                run = wrk(t.port, keys, min(10, args.many_seconds), args.connections, r["total"])
                r["total"] += run["total"]
                r["non2xx"] += run["non2xx"]
                r["seconds"] += run["total"] / max(run["rps"], 1)
            r["rps"] = r["total"] / max(r["seconds"], 1e-9)
            time.sleep(0.5)
            after = t.rss()
        finally:
            t.down()
        seen = min(keys, r["total"])
        ok = 1 - r["non2xx"] / max(1, r["total"])
        result[t.name] = {"idle": idle, "after": after, "seen": seen}
        print(f"| {t.name} | {idle / 1024:.1f} | {after / 1024:.1f} | {r['rps']:.0f} | "
              f"{seen} | {ok:.3f} |")
        sys.stdout.flush()
    return result


# ---------------------------------------------------------------------------- stores


class Redis:
    """The stores tables' redis-server: no persistence, on a port of its own, and on the load's
    CPU with --pin."""

    def __init__(self, port, work):
        self.port = port
        self.proc = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", work],
                          f"{work}/redis.log", role="load")
        wait_port(port, self.proc)

    def cli(self, *cmd):
        return subprocess.run(["redis-cli", "-p", str(self.port), *cmd], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()

    def sample(self):
        """Calls of sluice's script so far, and Redis's CPU time in seconds."""
        m = re.search(r"^cmdstat_evalsha:calls=(\d+)", self.cli("INFO", "commandstats"), re.M)
        return int(m.group(1)) if m else 0, sum(cpu_seconds([self.proc.pid]))

    def keys(self):
        """How many keys sluice has in Redis, and the bytes one of them takes (None if none)."""
        names = self.cli("--scan", "--pattern", "sluice:*").split()
        return len(names), int(self.cli("MEMORY", "USAGE", names[0])) if names else None


STORE_SERIES = {
    "calls": ['sluice_store_calls_total{result="ok"}'],
    "failed": ['sluice_store_calls_total{result="error"}',
               'sluice_store_calls_total{result="timeout"}'],
    "fallback": ["sluice_store_fallback_checks_total"],
    "held": ['sluice_store_local_answers_total{answer="refusal"}'],
    "leased": ['sluice_store_local_answers_total{answer="lease"}'],
}


def store_metrics(admin):
    """sluice's own counts of its calls to the store and of the checks it answered locally."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()

    def value(series):
        m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return {k: sum(map(value, series)) for k, series in STORE_SERIES.items()}


def run_stores(args, work, scenario, ports, redis):
    """One stores table: each target alone for its turn, Redis emptied before it."""
    keys = 1000 if scenario == "pass" else 10
    admin = ports[4]
    ts = targets(args, work, scenario, 1, ports, redis_port=redis.port)
    runs = {t.name: [] for t in ts}
    usage = {t.name: [] for t in ts if t.name.startswith("sluice-redis-")}
    try:
        for _ in range(args.rounds):
            for t in ts:
                redis.cli("FLUSHALL")
                t.up()
                wrk(t.port, keys, 1, args.connections)  # warm-up: connections, pools, keys
                if t.name in usage:
                    calls, cpu = redis.sample()
                    before = store_metrics(admin)
                r = t.load(keys, args.seconds, args.connections)
                runs[t.name].append(r)
                if t.name in usage:
                    # Right away: in pass, a key expires a second after its last call.
                    after_calls, after_cpu = redis.sample()
                    after = store_metrics(admin)
                    u = {k: after[k] - before[k] for k in STORE_SERIES}
                    u.update(total=r["total"], evalsha=after_calls - calls,
                             redis_cpu=after_cpu - cpu, keys=redis.keys())
                    usage[t.name].append(u)
                t.down()
    finally:
        for t in ts:
            t.down()
    title = f"stores, {scenario}, 1 worker (sluice: limiter state in memory)"
    med = summarize(scenario, 1, runs, title)
    print(f"\n{scenario}, Redis targets: per request wrk sent, over the measured runs; keys "
          "after the last run\n")
    print("| proxy | Redis calls/req | sluice store calls/req | failed calls, fallback checks "
          "| held refusals/req | leased tokens/req | Redis CPU µs/req | keys in Redis "
          "| bytes/key |")
    print("|---|---|---|---|---|---|---|---|---|")
    failures = []
    for name, us in usage.items():
        total = max(1, sum(u["total"] for u in us))

        def per(k):
            return sum(u[k] for u in us) / total

        count, size = us[-1]["keys"]
        # 4 significant digits: a few calls over many requests still show.
        print(f"| {name} | {per('evalsha'):.4g} | {per('calls'):.4g} | "
              f"{sum(u['failed'] for u in us):.0f}, {sum(u['fallback'] for u in us):.0f} | "
              f"{per('held'):.4g} | {per('leased'):.4g} | {per('redis_cpu') * 1e6:.1f} | "
              f"{count} | {size if size is not None else '-'} |")
        if scenario == "pass" and not per("evalsha"):
            failures.append(f"stores {scenario}: {name} made no calls to Redis")
    sys.stdout.flush()
    return med, failures


def check_stores(meds):
    """One line: the stores tables against the targets for a shared store. It informs only."""
    parts = []

    def ratio(m, name):
        return m[name]["rps"] / max(m["sluice"]["rps"], 1e-9)

    if "pass" in meds:
        lease = ratio(meds["pass"], "sluice-redis-lease")
        parts.append(f"lease pass req/s {lease:.2f}× memory (≥ 0.9: {verdict(lease >= 0.9)})")
        p99 = meds["pass"]["sluice-redis-exact"]["p99"] - meds["pass"]["sluice"]["p99"]
        parts.append(f"exact pass p99 {p99:+.2f} ms over memory (≤ 1 ms: {verdict(p99 <= 1)})")
    if "reject" in meds:
        exact = ratio(meds["reject"], "sluice-redis-exact")
        parts.append(f"exact reject req/s {exact:.2f}× memory (≥ 0.9: {verdict(exact >= 0.9)})")
    if parts:
        print("\ncheck: " + "; ".join(parts))


def verdict(met):
    return "met" if met else "missed"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="one round of 2 s, 1 worker; for CI")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=4, help="per proxy per round")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--workers", default="1,2", help="worker counts, one table each")
    ap.add_argument("--scenarios", help="of pass, reject, manykeys, tls; "
                    "default pass,reject,manykeys (--smoke: and tls)")
    ap.add_argument("--tls-connections", type=int, default=16,
                    help="wrk's connections in the handshake-heavy TLS table")
    ap.add_argument("--many-keys", type=int, default=1_000_000)
    ap.add_argument("--many-seconds", type=int, default=180, help="at most, per proxy")
    ap.add_argument("--port-base", type=int, default=18080)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--pin", action="store_true",
                    help="1 worker only: the proxy on CPU 1, wrk and the upstream on CPU 0")
    ap.add_argument("--variant", action="append", default=[], type=lambda v: tuple(v.split("=", 1)),
                    metavar="NAME=BINARY", help="another sluice build to run beside the others")
    ap.add_argument("--stores", action="store_true",
                    help="instead of the usual tables: sluice's memory store against Redis "
                         "(exact, lease) and nginx, 1 worker, on pass and reject")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.seconds, args.workers = 1, 2, "1"
        args.many_keys, args.many_seconds = 20_000, 2
    default = "pass,reject,manykeys" + (",tls" if args.smoke else "")
    scenarios = (args.scenarios or default).split(",")
    if args.stores:
        args.workers = "1"
    have_redis = all(map(shutil.which, ("redis-server", "redis-cli")))
    tools = ("nginx", "wrk") + (("redis-server", "redis-cli") if args.stores else ("haproxy",))
    for tool in tools + (("openssl",) if "tls" in scenarios and not args.stores else ()):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run bench/setup.sh")
    if args.pin:
        if args.workers != "1" or (os.cpu_count() or 1) < 2:
            raise SystemExit("--pin needs --workers 1 and at least two CPUs")
        PIN.update(proxy="1", load="0")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    ports = [args.port_base + i for i in range(5)]
    stores = args.stores or (args.smoke and have_redis)
    redis_port = args.port_base + len(ports)
    for p in ports + ([redis_port] if stores else []):
        check_free(p)
    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    work = tempfile.mkdtemp(prefix="sluice-bench-")
    os.makedirs(f"{work}/tmp")
    failures = []
    try:
        with open(f"{work}/upstream.conf", "w") as f:
            f.write(upstream_conf(ports[0], work))
        upstream = start(["nginx", "-p", work, "-e", f"{work}/upstream.err",
                          "-c", f"{work}/upstream.conf"], f"{work}/upstream.log", role="load")
        wait_port(ports[0], upstream)
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
              f"wrk -t1 -c{args.connections}, {args.seconds} s per proxy per round"
              + (f"; proxy pinned to CPU 1, wrk and upstream{' and Redis' if stores else ''} "
                 "to CPU 0" if args.pin else ""))
        for workers in () if args.stores else map(int, args.workers.split(",")):
            for scenario in (s for s in scenarios if s in ("pass", "reject")):
                med = run_table(args, work, scenario, workers, ports, upstream)
                failures += check(scenario, med)
        if "manykeys" in scenarios and not args.stores:
            many = run_manykeys(args, work, ports)
            if many["sluice"]["seen"] < args.many_keys and not args.smoke:
                print(f"note: sluice saw {many['sluice']['seen']} keys, fewer than asked")
        if "tls" in scenarios and not args.stores:
            failures += run_tls(args, work, ports)
        if stores:
            redis = Redis(redis_port, work)
            meds = {}
            for scenario in (s for s in scenarios if s in ("pass", "reject")):
                meds[scenario], fails = run_stores(args, work, scenario, ports, redis)
                failures += fails + [f"stores {f}" for f in check(scenario, meds[scenario])]
            check_stores(meds)
        elif args.smoke:
            print("\nnote: no redis-server, so no stores tables (bench/setup.sh installs it)")
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
    for f in failures:
        print(f"FAIL: {f}")
    sys.exit(1 if failures else 0)


def check_tls(mode, med):
    """2xx as in pass, every proxy's TLS alike, and a connection per request where meant."""
    failures = check("pass", med)
    probes = {name: m["tls"] for name, m in med.items()}
    if len({tuple(p.items()) for p in probes.values()}) > 1:
        failures.append(f"the proxies' TLS differs: {probes}")
    for name, m in med.items():
        if not m["tls"]["says close"]:
            failures.append(f"{name} did not answer `Connection: close` in kind")
        if mode == "handshake-heavy" and m["accepted"] < 0.95:
            failures.append(f"{name}: {m['accepted']:.2f} connections per request, not 1")
        if m["socket_errors"] > 0.01 * m["total"]:
            failures.append(f"{name}: {m['socket_errors']} wrk socket errors")
    return failures


def check(scenario, med):
    """Every proxy must answer the way its scenario means: mostly 200, or mostly 429."""
    failures = []
    for name, m in med.items():
        if scenario == "pass" and m["ok"] < 0.99:
            failures.append(f"{scenario}: {name} answered only {m['ok']:.1%} 2xx")
        if scenario == "reject" and m["ok"] > 0.05:
            failures.append(f"{scenario}: {name} let {m['ok']:.1%} through")
    return failures


if __name__ == "__main__":
    main()
