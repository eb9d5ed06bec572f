#!/usr/bin/env python3
"""Soak test: sluice under steady mixed traffic for a long while; memory, files and latency
must stay flat.

    bench/setup.sh                          # nginx and wrk (from Debian packages), once
    bench/soak.py                           # 30 minutes, results in docs/reliability/soak/
    bench/soak.py --minutes 3 --out /tmp/soak --no-build

Everything runs on 127.0.0.1: the release sluice with a soak config of its own (written to a
temporary directory), and behind it three upstreams: nginx answering a small JSON body
(bench/run.py's upstream), bench/soak_upstream.py (a Python server that answers slowly, resets,
stalls or answers 503 on purpose) and a port nothing listens on (refused connections).

Traffic, all at once, each class paced at a fixed rate (at most; a slow answer slows its own
class) and bounded in count and time. The total is a few hundred requests a second, far below
what sluice can do: a soak looks for leaks and drift, not for the peak.

  pass       wrk, 8 connections kept alive, at most 250 req/s (`--pass-rate`): GET /v1/… over
             100 keys, each request with a new X-Tenant (the `pass` policy's key), so the
             limiter keeps meeting new keys and its sweeper must drop them again. All 200.
             wrk runs in 10-s slices, one per sample, so each sample has its own p50 and p99.
  pass-body  4/s: POST of valid JSON, small and ~10 KiB (under max_body 16 KiB): 200.
  reject     5/s: one key far over the `tight` policy (burst 3, 2/min): 429 with Retry-After;
             a 200 beyond burst + rate × elapsed (+1) fails the run, and so do too few 200s.
  batch      1/s: POST /batch of 6 items: passing ones, an upstream 503, a 424 on it, a
             dependency that holds, one on the tight policy (200 or 429): 207, items as due.
  errors     4/s, in turn: invalid JSON 400, text/plain 415, declared and chunked bodies over
             max_body 413, unknown and missing key 401, no route 404, DELETE 405, batch not
             JSON 400, invalid batch 422, batch over max_requests 413, malformed head 400.
  faults     2/s, in turn: upstream resets before its head (502) and mid-body (cut answer),
             answers 503 (passed on as the upstream's), stalls (408 at the route's 1-s
             deadline), answers slowly within the deadline (200), drips past it (cut), a
             64-KiB answer (200), and a refused target (502, or 503 while it is skipped).
  slow       one client a second, at most 8 at once, in turn: a head trickled byte by byte
             within header_read_timeout (200) and past it (408), a body sent slowly within
             request_timeout (200) and past it (408), a 1-MiB answer read slowly (200), an
             8-MiB answer not read at all for 7 s (cut: sluice lets the client go), a
             connection that sends nothing and one idle after an answer (closed by sluice).
  reload     every 30 s, the other of two valid configs (they differ in the pass policy's
             limits, the batch concurrency and the rate-limit header style; the tight policy
             is the same), by POST /reload and SIGHUP in turn; each must be taken.

Every 10 s (one wrk slice) the script samples, halfway through the slice: sluice's RSS
(VmRSS), its open fds (/proc/PID/fd), threads, and from /metrics its open connections and
limiter keys (mostly the pass keys made since the last sweep, every 10 s: a saw-tooth as the
two clocks drift apart); with the slice's pass p50, p99 and req/s, every class's answers by
outcome (status, `cut`, `closed`, `hung`), sluice's CPU time per answer, wrk's CPU time per
request, how busy the machine's CPUs were over the slice (/proc/stat, every process's work,
the soak's own included) and the load average. All into soak.csv.

Flat within 10 %. The first 10 % of the run, and at least 60 s, is warm-up (pools, the
allocator's arenas, the limiter's tables reach their working size). Of the samples after it, a
first and a last window are compared, and only growth fails:
  RSS  mean of the window,   windows of 10 % of all samples (at least 3)   last <= 1.10 x first
  fds  median of the window, windows of 10 % of all samples (at least 3)   last <= 1.10 x first
  p50  median of the slices' p50s, windows of a third of the samples after warm-up   <= 1.10 x
  p99  median of the slices' p99s, windows of a third of the samples after warm-up   <= 1.10 x
RSS and fds by short windows at the very ends, since what leaks is largest at the end. The
median for fds because a sample catches however many slow clients and short connections happen
to be open at that instant; a leak moves the median, a passing crowd does not.
Latency by the median of thirds, because on a shared 2-core machine the noise is bursts: one
slice's p99 is the 25th-slowest of ~2500 requests, and any other work that takes the cores for
tens of ms (a compile, a test run) multiplies it, for as long as that work lasts: minutes for a
build. A 3-minute window can lie inside one such burst; a 9-minute third (in 30 minutes) moves
only if more than half its slices are slowed. A drift in sluice (a table that slows as it
grows, work that piles up) lasts and grows, so it moves the last third's median: a drift that
grows evenly shows two thirds of its whole size there, one that appears and stays all of it.
A fall (an arena given back) is reported, not failed: a soak looks for leaks and drift upward.
The median CPU time per answer is compared like latency but not judged: a p99 that grew while
sluice's CPU per answer did not, and with the machine's busy share, is the machine's doing.
Run the soak that counts on a quiet machine.

The run fails (exit 1) if a metric is not flat, if sluice died or did not exit 0 on SIGTERM
at the end, if any answer was not what its case expects (a 500, a 200 where a 429 was due, a
hung request, a reload not taken), or if the run was too short to judge (under 3 minutes).

Output in --out: soak.csv, rss.png, fds.png, p99.png (p50, p99 and the machine's busy share;
matplotlib, installed with pip if
missing), summary.json, summary.md, and sluice.log (sluice's warnings; not for the repo).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402 - bench/run.py: processes, ports, nginx upstream, wrk
import soak_traffic as traffic  # noqa: E402

ROOT = run.ROOT
SAMPLE_EVERY = 10  # seconds: one wrk slice, one row
PASS_CONNECTIONS = 8
FLAT = 0.10  # the largest growth allowed, first window to last
MIN_MINUTES = 3
OUTCOMES = ["200", "207", "400", "401", "404", "405", "408", "413", "415", "422", "429",
            "502", "503", "cut", "closed", "hung"]


# ---------------------------------------------------------------------------- configs


def sluice_conf(ports, workers, variant):
    """The soak config; `variant` 0 or 1, the two that reloads alternate."""
    keys = [f"key-{n}" for n in range(1, traffic.PASS_KEYS + 1)]
    keys += [traffic.BATCH_KEY, traffic.REJECT_KEY]
    listed = "".join(f'\n[[auth.keys]]\nname = "{k}"\n'
                     f'sha256 = "{hashlib.sha256(k.encode()).hexdigest()}"\n' for k in keys)
    rate = (1000, 2000)[variant]
    t = traffic
    return f"""
[server]
listen = "127.0.0.1:{ports['sluice']}"
admin_listen = "127.0.0.1:{ports['admin']}"
workers = {workers}
header_read_timeout = "{t.HEADER_READ}s"
request_timeout = "{t.REQUEST}s"
idle_timeout = "{t.IDLE}s"
drain_timeout = "5s"

[upstreams.api]
targets = ["http://127.0.0.1:{ports['nginx']}"]

[upstreams.faulty]
targets = ["http://127.0.0.1:{ports['faulty']}"]

[upstreams.gone]
targets = ["http://127.0.0.1:{ports['gone']}"]

# Far above the pass traffic; its key changes with every request.
[policies.pass]
rate = "{rate}/s"
burst = {rate}
key = "header:x-tenant"

[policies.tight]
rate = "{t.TIGHT_PER_MINUTE}/m"
burst = {t.TIGHT_BURST}
key = "api_key"

# The errors class sends unknown keys on purpose: they must stay 401, not turn 429.
[policies.auth_failures]
rate = "20/s"
burst = 100
key = "ip"

[[routes]]
path = "/v1/"
upstream = "api"
policy = "pass"
methods = ["GET", "POST"]
max_body = "{t.MAX_BODY // 1024}KiB"

[[routes]]
path = "/tight/"
upstream = "api"
policy = "tight"

[[routes]]
path = "/faults/"
upstream = "faulty"
policy = "pass"
request_timeout = "{t.FAULT_REQUEST}s"

[[routes]]
path = "/faults/big"
upstream = "faulty"
policy = "pass"
request_timeout = "{t.BIG_REQUEST}s"

[[routes]]
path = "/gone/"
upstream = "gone"
policy = "pass"

[batch]
max_requests = 20
max_concurrency = {(8, 4)[variant]}

[headers]
ratelimit = "{('ietf', 'both')[variant]}"

[auth]
mode = "api_keys"
{listed}"""


# The pass traffic: bench/keys.lua's keys, a new X-Tenant on every request, at most one request
# per connection every DELAY ms; answers counted by status and printed as "status CODE COUNT".
PASS_LUA = """dofile("{keys}")
local keyed, keys_init = request, init
local tenant, threads = 0, {{}}
statuses = {{}} -- a global: done() reads each thread's with thread:get

function setup(thread) table.insert(threads, thread) end

function init(args)
   keys_init(args)
   tenant = tonumber(args[2]) -- the slice's first tenant: new ones in every slice
end

function request()
   tenant = tenant + 1
   return keyed():sub(1, -3) .. "X-Tenant: t" .. tenant .. "\\r\\n\\r\\n"
end

function delay() return {delay} end

function response(status) statuses[status] = (statuses[status] or 0) + 1 end

function done()
   for _, t in ipairs(threads) do
      for status, n in pairs(t:get("statuses")) do
         io.write("status ", status, " ", n, "\\n")
      end
   end
end
"""


# ---------------------------------------------------------------------------- sampling


def proc_sample(pid):
    """sluice's RSS (KiB), open fds and threads, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        threads = int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))
    return {"rss_kib": run.rss_kib([pid]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": threads}


def gauges(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()

    def value(name):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return int(float(m.group(1))) if m else -1

    return {"connections": value("sluice_connections_open"),
            "limiter_keys": value("sluice_limiter_keys")}


def pass_slice(port, lua, seconds, index, box, tally):
    """One wrk slice of pass traffic; its statuses go into the tally (all must be 200)."""
    try:
        r = run.wrk(port, traffic.PASS_KEYS, seconds, PASS_CONNECTIONS, index * 1_000_000,
                    script=lua)
    except (SystemExit, subprocess.TimeoutExpired) as e:  # sluice gone, or wrk stuck
        tally.record("pass", "get", "error", False, f"wrk: {e}")
        return
    for status, n in re.findall(r"^status (\d+) (\d+)$", r["output"], re.M):
        tally.record("pass", "get", status, status == "200", "", int(n))
    if r["socket_errors"]:
        tally.record("pass", "get", "socket-error", False, f"wrk: {r['socket_errors']} socket "
                     "errors", r["socket_errors"])
    box.update(r)


def sample_loop(sluice, ports, lua, tally, deadline, start):
    """A row every SAMPLE_EVERY s until the deadline, or until sluice dies."""
    rows, cpu, machine = [], sum(run.cpu_seconds([sluice.pid])), machine_cpu()
    for index in range(int((deadline - start) / SAMPLE_EVERY) + 1):
        seconds = min(SAMPLE_EVERY, int(deadline - time.monotonic()))
        if seconds < 1 or sluice.poll() is not None:
            break
        box = {}
        wrk = threading.Thread(target=pass_slice,
                               args=(ports["sluice"], lua, seconds, index, box, tally))
        wrk.start()
        time.sleep(seconds / 2)  # halfway: wrk's connections are open, as most of the time
        at = time.monotonic() - start
        try:
            row = {"t_s": round(at, 1), **proc_sample(sluice.pid), **gauges(ports["admin"])}
        except (OSError, AttributeError):
            row = None  # sluice is gone; the check below says so
        wrk.join()
        if row is None or sluice.poll() is not None:
            break
        used, now = sum(run.cpu_seconds([sluice.pid])), machine_cpu()
        busy = (now[0] - machine[0]) / max(1, now[1] - machine[1])
        rows.append(finish_row(row, box, *tally.take(), used - cpu, busy))
        cpu, machine = used, now
        print(f"{at / 60:5.1f} min  RSS {row['rss_kib'] / 1024:6.1f} MiB  fds {row['fds']:3d}  "
              f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
              f"pass {row['pass_rps']:.0f}/s  busy {row['machine_busy']:.0%}  "
              f"unexpected {row['unexpected']}", flush=True)
    return rows


def machine_cpu():
    """All CPUs' busy and total jiffies since boot (/proc/stat's first line)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def finish_row(row, box, counts, bad, cpu, busy):
    """The slice's latency, answers by outcome, and what tells sluice's drift from the
    machine's: sluice's CPU time per answer, wrk's per request, the machine's busy share and
    load."""
    reloads = counts.pop("ok", 0) + counts.pop("failed", 0)  # reloads are not answers
    answers = sum(counts.values())
    row.update(pass_rps=round(box.get("rps", 0), 1), p50_ms=box.get("p50", float("nan")),
               p99_ms=box.get("p99", float("nan")),
               cpu_us_per_answer=round(cpu * 1e6 / max(answers, 1), 1),
               wrk_us_per_request=round(box.get("wrk_us", float("nan")), 1),
               machine_busy=round(busy, 3), load=os.getloadavg()[0], unexpected=bad,
               reloads=reloads)
    row.update({f"n_{o}": counts.pop(o, 0) for o in OUTCOMES})
    row["n_other"] = sum(counts.values())
    return row


# ---------------------------------------------------------------------------- verdict


def flatness(rows, seconds):
    """Each metric's first and last post-warm-up windows (see the module's docstring)."""
    warm = max(60.0, 0.1 * seconds)
    after = [r for r in rows if r["t_s"] >= warm]
    tenth, third = max(3, round(0.1 * len(rows))), max(3, len(after) // 3)
    if len(after) < 2 * tenth:
        return None
    # measure, window (samples), judged. The last is not judged: it says whether a latency
    # that grew is sluice's or the machine's.
    measures = {"rss_kib": (statistics.mean, tenth, True),
                "fds": (statistics.median, tenth, True),
                "p50_ms": (statistics.median, third, True),
                "p99_ms": (statistics.median, third, True),
                "cpu_us_per_answer": (statistics.median, third, False)}
    out = {"warm_up_s": warm, "metrics": {}}
    for key, (measure, size, judged) in measures.items():
        first, last = after[:size], after[-size:]
        # A slice whose wrk failed has no latency (NaN); the run fails for it anyway.
        a, b = (measure([r[key] for r in w if r[key] == r[key]] or [float("nan")])
                for w in (first, last))
        change = b / a - 1 if a else float("inf")
        out["metrics"][key] = {"measure": measure.__name__, "samples": size,
                               "windows_s": [[w[0]["t_s"], w[-1]["t_s"]] for w in (first, last)],
                               "first": round(a, 3), "last": round(b, 3),
                               "change": round(change, 4), "flat": change <= FLAT,
                               "judged": judged}
    return out


def reject_check(tally):
    """The reject key's 200s: as many as its burst and the tokens it earned, give or take one."""
    seen = tally.reject
    if not seen or seen["first"] is None:
        return None
    minutes = (seen["last"] - seen["first"]) / 60
    low = traffic.TIGHT_BURST + int(minutes * traffic.TIGHT_PER_MINUTE) - 1
    high = traffic.TIGHT_BURST + minutes * traffic.TIGHT_PER_MINUTE + 1
    return {"allowed": seen["allowed"], "due_at_least": low, "due_at_most": round(high, 1),
            "ok": low <= seen["allowed"] <= high}


# ---------------------------------------------------------------------------- report


def ensure_matplotlib():
    """matplotlib, from pip if it is missing (quietly); checked before the run, not after."""
    try:
        import matplotlib
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "matplotlib"], check=True)
        import matplotlib
    matplotlib.use("Agg")  # files only, no display


def plot(rows, judged, out):
    import matplotlib.pyplot as plt
    minutes = [r["t_s"] / 60 for r in rows]
    panels = [("rss.png", "RSS (MiB)", {"RSS": [r["rss_kib"] / 1024 for r in rows]}, "rss_kib",
               1024),
              ("fds.png", "open file descriptors", {"fds": [r["fds"] for r in rows]}, "fds", 1),
              ("p99.png", "pass latency (ms)", {"p99": [r["p99_ms"] for r in rows],
                                                "p50": [r["p50_ms"] for r in rows]}, "p99_ms", 1)]
    for name, label, series, key, scale in panels:
        fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
        for legend, ys in series.items():
            ax.plot(minutes, ys, marker=".", linewidth=1, label=legend)
        if judged:
            ax.axvspan(0, judged["warm_up_s"] / 60, color="0.9", label="warm-up")
            m = judged["metrics"][key]
            for (lo, hi), value in zip(m["windows_s"], (m["first"], m["last"])):
                ax.hlines(value / scale, lo / 60, hi / 60, colors="k", linewidth=2)
            ax.axhline(m["first"] * (1 + FLAT) / scale, color="r", linestyle="--",
                       linewidth=1, label="+10 % of first window")
        ax.set_xlabel("minutes")
        ax.set_ylabel(label)
        handles, labels = ax.get_legend_handles_labels()
        if key == "p99_ms":
            # p50 and p99 are two orders apart, and a burst of other work is another.
            ax.set_yscale("log")
            # What else the machine did: a p99 that jumps with it is not sluice's drift.
            busy = ax.twinx()
            busy.plot(minutes, [r["machine_busy"] * 100 for r in rows], color="0.55",
                      linewidth=0.8, label="machine CPU busy (%)")
            busy.set_ylim(0, 100)
            busy.set_ylabel("machine CPU busy (%)")
            more = busy.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        else:
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(handles, labels, loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, name))
        plt.close(fig)


def write_csv(rows, path):
    cols = list(rows[0]) if rows else ["t_s"]
    with open(path, "w") as f:
        f.write(",".join(cols) + "\n")
        for r in rows:
            f.write(",".join(str(r[c]) for c in cols) + "\n")


def summary_md(s):
    lines = [f"# Soak: {s['minutes']} minutes, sluice {s['commit']}, {s['date']}", "",
             f"Machine: {s['machine']}. Verdict: **{'pass' if s['ok'] else 'FAIL'}**"
             + ("" if s["ok"] else f" ({'; '.join(s['failures'])})") + ".", ""]
    j = s["flatness"]
    if j:
        lines += [f"Warm-up {j['warm_up_s']:.0f} s.", "",
                  "| metric | of the window | windows (s) | first | last | change | "
                  "flat (≤ +10 %) |", "|---|---|---|---|---|---|---|"]
        for key, m in j["metrics"].items():
            flat = ("yes" if m["flat"] else "no") + ("" if m["judged"] else " (not judged)")
            (a, b), (c, d) = m["windows_s"]
            lines.append(f"| {key} | {m['measure']} of {m['samples']} | {a:.0f}–{b:.0f}, "
                         f"{c:.0f}–{d:.0f} | {m['first']} | {m['last']} | "
                         f"{m['change']:+.1%} | {flat} |")
    lines += ["", "| class | rate asked | answers/s | outcomes |", "|---|---|---|---|"]
    for cls, c in s["classes"].items():
        outcomes = ", ".join(f"{o} {n}" for o, n in sorted(c["outcomes"].items()))
        lines.append(f"| {cls} | {c['rate']} | {c['per_second']} | {outcomes} |")
    lines += ["", f"Unexpected answers: {s['unexpected_count']}."]
    lines += [f"- {u['at']} {u['class']} {u['case']}: {u['got']} {u['detail']}"
              for u in s["unexpected"][:10]]
    if s["reject"]:
        r = s["reject"]
        lines += ["", f"Reject key admitted {r['allowed']} (due {r['due_at_least']}–"
                      f"{r['due_at_most']})."]
    end = "died during the run" if s["died"] else f"exit {s['exit_code']} on SIGTERM"
    lines += ["", f"sluice: {end}; log lines: {s['log_levels']}.", "",
              "![RSS](rss.png)", "", "![fds](fds.png)", "", "![p99](p99.png)", ""]
    return "\n".join(lines)


def log_levels(path):
    """sluice's log lines by level (SLUICE_LOG=warn: warnings and errors only)."""
    levels = {}
    with open(path, errors="replace") as f:
        for line in f:
            m = re.search(r"\b(ERROR|WARN|INFO)\b", line)
            if m:
                levels[m.group(1)] = levels.get(m.group(1), 0) + 1
    return levels


def summarize(args, rows, tally, seconds, exit_code, died, log):
    judged = flatness(rows, seconds)
    classes = {}
    for (cls, outcome), n in sorted(tally.total.items()):
        c = classes.setdefault(cls, {"outcomes": {}})
        c["outcomes"][outcome] = n
    for cls, c in classes.items():
        rate = args.pass_rate if cls == "pass" else traffic.RATES.get(cls)
        c["rate"] = f"{rate:.3g}/s" if rate else "-"
        c["per_second"] = round(sum(c["outcomes"].values()) / max(seconds, 1), 2)
    reject = reject_check(tally)
    failures = []
    if died:
        failures.append("sluice died during the run")
    elif exit_code != 0:
        failures.append(f"sluice exited {exit_code} on SIGTERM")
    if tally.unexpected_count:
        failures.append(f"{tally.unexpected_count} unexpected answers")
    if reject and not reject["ok"]:
        failures.append("the reject key's admissions were not as due")
    if judged is None:
        failures.append(f"too short to judge flatness (at least {MIN_MINUTES} minutes)")
    else:
        failures += [f"{k} grew {m['change']:+.1%}" for k, m in judged["metrics"].items()
                     if m["judged"] and not m["flat"]]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return {"minutes": args.minutes, "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the end",
            "sluice_workers": args.workers, "samples": len(rows), "flatness": judged,
            "classes": classes, "unexpected_count": tally.unexpected_count,
            "unexpected": tally.unexpected, "retries": tally.retries, "reject": reject,
            "exit_code": exit_code, "died": died, "log_levels": log_levels(log),
            "failures": failures,
            "ok": not failures}


# ---------------------------------------------------------------------------- main


def start_all(args, work, ports):
    """nginx, the faulty upstream and sluice; returns sluice's Popen and the plan's configs."""
    with open(f"{work}/upstream.conf", "w") as f:
        f.write(run.upstream_conf(ports["nginx"], work))
    nginx = run.start(["nginx", "-p", work, "-e", f"{work}/upstream.err",
                       "-c", f"{work}/upstream.conf"], f"{work}/upstream.log", role="load")
    faulty = run.start([sys.executable, os.path.join(ROOT, "bench", "soak_upstream.py"),
                        str(ports["faulty"])], f"{work}/faulty.log", role="load")
    run.wait_port(ports["nginx"], nginx)
    run.wait_port(ports["faulty"], faulty)
    configs = [(name, sluice_conf(ports, args.workers, v)) for v, name in enumerate("ab")]
    live = f"{work}/sluice.toml"
    traffic.write_config(live, configs[0][1])
    binary = os.path.join(ROOT, "target", "release", "sluice")
    check = subprocess.run([binary, "check", "--config", live], capture_output=True, text=True)
    if check.returncode:
        raise SystemExit(f"the soak config does not validate:\n{check.stdout}{check.stderr}")
    log = os.path.join(args.out, "sluice.log")
    open(log, "w").close()
    sluice = run.start([binary, "--config", live], log, env=dict(os.environ, SLUICE_LOG="warn"))
    run.wait_port(ports["sluice"], sluice)
    run.wait_port(ports["admin"], sluice)
    return sluice, configs, live, log


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "reliability", "soak"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--pass-rate", type=int, default=250, help="wrk's requests/s, at most")
    ap.add_argument("--workers", type=int, default=2, help="sluice's worker threads")
    ap.add_argument("--port-base", type=int, default=19080)
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run bench/setup.sh")
    ensure_matplotlib()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    names = ("nginx", "faulty", "gone", "sluice", "admin")
    ports = {name: args.port_base + i for i, name in enumerate(names)}
    for p in ports.values():
        run.check_free(p)
    os.makedirs(args.out, exist_ok=True)
    signal.signal(signal.SIGTERM, run.stop_all)
    signal.signal(signal.SIGINT, run.stop_all)
    work = tempfile.mkdtemp(prefix="sluice-soak-")
    os.makedirs(f"{work}/tmp")
    lua = os.path.join(work, "pass.lua")
    delay = max(1, round(PASS_CONNECTIONS * 1000 / args.pass_rate))
    with open(lua, "w") as f:
        f.write(PASS_LUA.format(keys=run.KEYS_LUA, delay=delay))
    try:
        sluice, configs, live, log = start_all(args, work, ports)
        seconds = args.minutes * 60
        start = time.monotonic()
        tally = traffic.Tally()
        plan = traffic.Plan(ports["sluice"], ports["admin"], sluice.pid, start + seconds, tally,
                            configs, live)
        mixed = threading.Thread(target=traffic.run, args=(plan,), daemon=True)
        mixed.start()
        print(f"soak: {args.minutes:g} min; pass at most {args.pass_rate}/s (wrk, "
              f"{PASS_CONNECTIONS} connections); "
              + ", ".join(f"{c} {r:.3g}/s" for c, r in traffic.RATES.items()), flush=True)
        rows = sample_loop(sluice, ports, lua, tally, start + seconds, start)
        plan.stop.set()
        mixed.join(traffic.PATIENCE * 3)  # the slow clients still running end within that
        died = sluice.poll() is not None
        run.stop(sluice)  # SIGTERM: drain, then exit 0
        exit_code = sluice.returncode
    finally:
        run.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    s = summarize(args, rows, tally, seconds, exit_code, died, log)
    write_csv(rows, os.path.join(args.out, "soak.csv"))
    plot(rows, s["flatness"], args.out)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(s, f, indent=2)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary_md(s))
    print(summary_md(s))
    for failure in s["failures"]:
        print(f"FAIL: {failure}")
    sys.exit(0 if s["ok"] else 1)


if __name__ == "__main__":
    main()
