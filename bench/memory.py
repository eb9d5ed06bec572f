#!/usr/bin/env python3
"""sluice's memory under two floods: a million distinct client keys, and a storm of batches.

    bench/setup.sh                 # nginx and wrk (from Debian packages), once
    bench/memory.py                # both parts; a release build first
    bench/memory.py --part keys --keys 100000 --no-build

Everything runs on 127.0.0.1: the release sluice, with the built-in default policy (burst
100, 1/s and 100 per 60 s, keyed by the presented API key) and the memory store, in front of
nginx answering a small JSON body (bench/run.py's upstream). The only changes to the defaults
are the ports, `max_keys` (a little above --keys, so that every key gets its own state rather
than the shared overflow state) and no access log (a line per request would only measure the
disk). `workers` is the default: one per core.

keys  --rounds rounds, each of --keys new distinct `X-Api-Key`s, one request per key, sent by
      wrk (1 thread, --connections kept alive) in slices of at most 10 s within --seconds
      (after a warm-up of 10,000 other keys, so that connections and arenas are there before
      the first figure). Every answer must be 200: one request per key (two, where a slice
      overshoots) is far under the policy.
      A key's state is a fresh key's again once its request has left the 60-s window (counted
      in 12-s sub-windows) and its bucket is full, and the sweep (every 10 s) drops it then:
      a round that takes longer than about a minute never holds all its keys at once, only
      the last minute's or so. So the table is read at the end of every slice
      (sluice_limiter_keys), and bytes per key = RSS growth from the round's start to the
      most keys tracked at once, divided by that number.
      After each round, idle until the sweep has dropped every key (sluice_limiter_keys 0;
      it must within 60 + 12 + 2 x 10 + 10 s), and RSS then ("after the sweep", idle). A
      sweep that leaves a table less than a quarter full shrinks it, but the old table is
      freed on the sweeping thread while the allocator's pages belong to the workers that
      grew it, and they go back to the system only when those workers allocate again: idle,
      RSS stays up. So a settling pass follows (1 s of requests over the same 2,000 keys
      every round, as any live proxy would see) and RSS is read again ("settled").
      Bounded: settled RSS after every round must be within 16 MiB of RSS before the first
      round (a table kept at a million keys' size is 30-50 MiB), and must not grow round
      after round: after the last round within 10 % (or 4 MiB, at small scales) of after
      the one before.
storm --batches POST /batch of 100 items each (batch.max_requests), --concurrency at once on
      keep-alive connections, each batch under a key of its own (100 items spend exactly the
      default burst of 100). Every answer must be right: a 207 whose 100 responses are the
      items' ids in order, each 200 with the upstream's exact body. RSS sampled every 20 ms:
      before, peak, and after.

Exit 1 if any answer was wrong, sluice died, a key was not tracked or not swept in time, or
settled RSS stayed up after a sweep or grew round after round. Results as JSON on stdout's
last line and in --out (memory.json).
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402 - bench/run.py: processes, ports, nginx upstream, wrk

ROOT = run.ROOT
BATCH_ITEMS = 100  # batch.max_requests's default
WINDOW_S, SUB_WINDOW_S, SWEEP_EVERY_S = 60, 12, 10  # the default policy's window; the sweep
WARM_UP_BASE, WARM_UP_KEYS = 10**9, 10_000
SETTLE_BASE, SETTLE_KEYS = 2 * 10**9, 2_000  # the same keys after every round's sweep
SETTLED_MIB = 16  # the most settled RSS may be above RSS before the first round
GROWTH, GROWTH_MIB = 0.10, 4  # the most settled RSS may grow from one round to the next


def sluice_conf(ports, max_keys):
    return f"""
[server]
listen = "127.0.0.1:{ports['sluice']}"
admin_listen = "127.0.0.1:{ports['admin']}"
max_keys = {max_keys}
access_log = false

[upstreams.api]
targets = ["http://127.0.0.1:{ports['nginx']}"]
"""


# One request per key, X-Api-Key: key-(BASE + k) for k = FIRST+1 .. COUNT, then around again
# within the same COUNT keys, never beyond them: a slice that overshoots repeats its own keys.
KEYS_LUA = """local base, count, k = {base}, 1, 0

function init(args)
   count, k = tonumber(args[1]), tonumber(args[2])
end

function request()
   k = k % count + 1
   return "GET " .. wrk.path .. " HTTP/1.1\\r\\nHost: " .. wrk.headers["Host"]
      .. "\\r\\nX-Api-Key: key-" .. (base + k) .. "\\r\\n\\r\\n"
end
"""


def metric(admin, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        m = re.search(rf"^{name} (\S+)$", r.read().decode(), re.M)
    return int(float(m.group(1))) if m else -1


def mib(kib):
    return round(kib / 1024, 1)


# ---------------------------------------------------------------------------- keys


def drive_keys(port, first, keys, conns, seconds, work, sluice=None, admin=None):
    """One request per key, keys first+1 .. first+keys, in wrk slices; counts of answers and,
    with `admin`, the most keys tracked at a slice's end and sluice's RSS then."""
    lua = os.path.join(work, f"keys-{first}.lua")
    with open(lua, "w") as f:
        f.write(KEYS_LUA.format(base=first))
    sent = non2xx = errors = 0
    rps, peak = None, {"tracked": 0, "rss_kib": 0}
    start = time.monotonic()
    while sent < keys and time.monotonic() - start < seconds:
        # Slices of whole seconds, the last ones short: what a slice sends past the last
        # key repeats keys of this round, so it is kept small.
        left = seconds - (time.monotonic() - start)
        slice_s = min(10, int(left), int((keys - sent) / rps) if rps else 2)
        r = run.wrk(port, keys, max(1, slice_s), conns, sent, script=lua)
        rps = r["rps"]
        sent += r["total"]
        non2xx += r["non2xx"]
        errors += r["socket_errors"]
        tracked = metric(admin, "sluice_limiter_keys") if admin else 0
        if tracked > peak["tracked"]:
            peak = {"tracked": tracked, "rss_kib": run.rss_kib([sluice.pid])}
        print(f"  {min(sent, keys):>9} keys sent, {r['rps']:.0f} req/s, {tracked} tracked",
              flush=True)
    return {"sent": sent, "non2xx": non2xx, "socket_errors": errors,
            "seconds": round(time.monotonic() - start, 1), "peak": peak}


def wait_swept(sluice, admin, limit):
    """Seconds until sluice_limiter_keys is 0, or None past `limit` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if sluice.poll() is not None:
            return None
        if metric(admin, "sluice_limiter_keys") == 0:
            return round(time.monotonic() - start, 1)
        time.sleep(1)
    return None


def part_keys(args, sluice, ports):
    n = args.keys
    rounds, failures = [], []
    # Warm-up, so that the rounds' growth is the keys' alone: wrk's connections, their buffers
    # and the allocator's per-thread arenas are there before "before" (keys of their own).
    drive_keys(ports["sluice"], WARM_UP_BASE, WARM_UP_KEYS, args.connections, 5, args.work)
    for index in range(args.rounds):
        before = run.rss_kib([sluice.pid])
        print(f"keys, round {index + 1}: {n} new keys", flush=True)
        d = drive_keys(ports["sluice"], index * n, n, args.connections, args.seconds,
                       args.work, sluice, ports["admin"])
        time.sleep(0.5)
        after = run.rss_kib([sluice.pid])
        distinct = min(n, d["sent"])  # what was sent beyond n repeated this round's keys
        limit = WINDOW_S + SUB_WINDOW_S + 2 * SWEEP_EVERY_S + 10
        print(f"  waiting for the sweep (at most {limit} s)", flush=True)
        swept_in = wait_swept(sluice, ports["admin"], limit)
        swept = run.rss_kib([sluice.pid])
        settle = drive_keys(ports["sluice"], SETTLE_BASE, SETTLE_KEYS, args.connections, 1,
                            args.work)
        time.sleep(1)
        settled = run.rss_kib([sluice.pid])
        peak = d.pop("peak")
        r = {"keys": distinct, **d, "tracked_peak": peak["tracked"],
             "rss_before_mib": mib(before), "rss_at_peak_mib": mib(peak["rss_kib"]),
             "rss_after_mib": mib(after),
             "bytes_per_tracked_key": round((peak["rss_kib"] - before) * 1024
                                            / max(peak["tracked"], 1), 1),
             "swept_in_s": swept_in, "rss_after_sweep_mib": mib(swept),
             "rss_settled_mib": mib(settled)}
        print(f"  {json.dumps(r)}", flush=True)
        rounds.append(r)
        if d["sent"] < n:
            failures.append(f"round {index + 1}: only {d['sent']} keys sent in {args.seconds} s")
        if d["non2xx"] or d["socket_errors"]:
            failures.append(f"round {index + 1}: {d['non2xx']} answers not 2xx, "
                            f"{d['socket_errors']} socket errors")
        if swept_in is None:
            failures.append(f"round {index + 1}: keys not swept within {limit} s")
        if settle["non2xx"] or settle["socket_errors"]:
            failures.append(f"round {index + 1}, settling: {settle['non2xx']} answers not 2xx, "
                            f"{settle['socket_errors']} socket errors")
        above = r["rss_settled_mib"] - rounds[0]["rss_before_mib"]
        if above > SETTLED_MIB:
            failures.append(f"round {index + 1}: settled RSS {above:+.1f} MiB above before "
                            f"the first round (at most {SETTLED_MIB})")
    out = {"rounds": rounds, "failures": failures}
    if len(rounds) >= 2:
        last, previous = rounds[-1]["rss_settled_mib"], rounds[-2]["rss_settled_mib"]
        out["rss_growth_last_round"] = round(last / previous - 1, 4)
        if last - previous > max(GROWTH * previous, GROWTH_MIB):
            failures.append(f"settled RSS after the last round is {last - previous:+.1f} MiB "
                            "from after the one before")
    return out


# ---------------------------------------------------------------------------- storm


def batch_body():
    items = [{"id": f"i{k}", "method": "GET", "path": f"/v1/items/{k}"}
             for k in range(BATCH_ITEMS)]
    return json.dumps({"requests": items}).encode()


def check_batch(status, body):
    """None if the answer is right, else what is wrong with it."""
    if status != 207:
        return f"status {status}"
    responses = json.loads(body)["responses"]
    if [r["id"] for r in responses] != [f"i{k}" for k in range(BATCH_ITEMS)]:
        return "ids not the items' in order"
    expected = json.loads(run.BODY)
    for r in responses:
        if r["status"] != 200 or r.get("body") != expected:
            return f"item {r['id']}: {r['status']} {str(r.get('body'))[:80]}"
    return None


def storm_client(port, numbers, body, out, lock):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for n in numbers:
        try:
            conn.request("POST", "/batch", body, {"Content-Type": "application/json",
                                                  "X-Api-Key": f"storm-{n}"})
            r = conn.getresponse()
            wrong = check_batch(r.status, r.read())
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            wrong = f"{type(e).__name__}: {e}"
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        with lock:
            out["answers"] += 1
            if wrong:
                out["wrong"].append(f"batch {n}: {wrong}")
    conn.close()


def part_storm(args, sluice, ports):
    body = batch_body()
    before = run.rss_kib([sluice.pid])
    out, lock = {"answers": 0, "wrong": []}, threading.Lock()
    peak = {"kib": before}
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            peak["kib"] = max(peak["kib"], run.rss_kib([sluice.pid]))

    sampler = threading.Thread(target=sample)
    sampler.start()
    print(f"storm: {args.batches} batches of {BATCH_ITEMS} items, {args.concurrency} at once",
          flush=True)
    start = time.monotonic()
    clients = [threading.Thread(target=storm_client,
                                args=(ports["sluice"], range(c, args.batches, args.concurrency),
                                      body, out, lock))
               for c in range(args.concurrency)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    seconds = time.monotonic() - start
    done.set()
    sampler.join()
    time.sleep(1)
    after = run.rss_kib([sluice.pid])
    r = {"batches": args.batches, "items": args.batches * BATCH_ITEMS,
         "concurrency": args.concurrency, "seconds": round(seconds, 1),
         "items_per_s": round(args.batches * BATCH_ITEMS / seconds),
         "answers": out["answers"], "wrong": len(out["wrong"]),
         "wrong_first": out["wrong"][:5], "batch_body_bytes": len(body),
         "rss_before_mib": mib(before), "rss_peak_mib": mib(peak["kib"]),
         "rss_after_mib": mib(after)}
    print(f"  {json.dumps(r)}", flush=True)
    failures = []
    if out["wrong"] or out["answers"] != args.batches:
        failures.append(f"storm: {len(out['wrong'])} wrong answers of {out['answers']}")
    return {**r, "failures": failures}


# ---------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "keys", "storm"), default="all")
    ap.add_argument("--keys", type=int, default=1_000_000, help="distinct keys per round")
    ap.add_argument("--rounds", type=int, default=3, help="of --keys new keys each")
    ap.add_argument("--seconds", type=int, default=300, help="the most one round may take")
    ap.add_argument("--connections", type=int, default=64, help="wrk's, kept alive")
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64, help="batches at once")
    ap.add_argument("--out", default=None, help="a directory for memory.json")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--port-base", type=int, default=19180)
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run bench/setup.sh")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    ports = {name: args.port_base + i for i, name in enumerate(("nginx", "sluice", "admin"))}
    for p in ports.values():
        run.check_free(p)
    signal.signal(signal.SIGTERM, run.stop_all)
    signal.signal(signal.SIGINT, run.stop_all)
    work = tempfile.mkdtemp(prefix="sluice-memory-")
    os.makedirs(f"{work}/tmp")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip(),
              "args": dict(vars(args))}
    failures = []
    try:
        with open(f"{work}/upstream.conf", "w") as f:
            f.write(run.upstream_conf(ports["nginx"], work))
        nginx = run.start(["nginx", "-p", work, "-e", f"{work}/upstream.err",
                           "-c", f"{work}/upstream.conf"], f"{work}/upstream.log", role="load")
        run.wait_port(ports["nginx"], nginx)
        with open(f"{work}/sluice.toml", "w") as f:
            f.write(sluice_conf(ports, args.keys + args.keys // 10))
        binary = os.path.join(ROOT, "target", "release", "sluice")
        sluice = run.start([binary, "--config", f"{work}/sluice.toml"], f"{work}/sluice.log",
                           env=dict(os.environ, SLUICE_LOG="warn"))
        run.wait_port(ports["sluice"], sluice)
        run.wait_port(ports["admin"], sluice)
        time.sleep(0.5)
        args.work = work
        result["rss_start_mib"] = mib(run.rss_kib([sluice.pid]))
        if args.part in ("all", "keys"):
            result["keys"] = part_keys(args, sluice, ports)
            failures += result["keys"].pop("failures")
        if args.part in ("all", "storm"):
            result["storm"] = part_storm(args, sluice, ports)
            failures += result["storm"].pop("failures")
        if sluice.poll() is not None:
            failures.append(f"sluice exited {sluice.returncode} during the run")
        run.stop(sluice)
        if sluice.returncode != 0:
            failures.append(f"sluice exited {sluice.returncode} on SIGTERM")
        with open(f"{work}/sluice.log", errors="replace") as f:
            result["sluice_log_lines"] = sum(1 for _ in f)
    finally:
        run.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    result["failures"] = failures
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "memory.json"), "w") as f:
            json.dump(result, f, indent=2)
    for failure in failures:
        print(f"FAIL: {failure}")
    print(json.dumps(result))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
