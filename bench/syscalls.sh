#!/usr/bin/env bash
# System calls per request, by name, under strace: where the kernel's share of a request goes,
# beside the peers. The same setup as bench/instructions.sh (its configs, upstream and load).
#
#   bench/syscalls.sh [BINARY [SCENARIO [PROXY...]]]
#
#   BINARY    sluice's (target/release/sluice)
#   SCENARIO  pass (limits far above the load, 1000 keys) or reject (the published default,
#             10 keys): the load benchmark's configs (bench/run.py); or, sluice alone, pass's
#             config with Idempotency-Key on the route (for GET, so that the requests are
#             pass's own): idem-off (no header: its cost on the pass path), idem-unique (a new
#             key per request, each forwarded and kept), idem-replay (one key per client,
#             replayed from its second request on)
#   PROXY     sluice (the default), nginx, haproxy: each counted alone, one after the other,
#             as a single process: sluice with 1 worker, nginx with `master_process off`,
#             HAProxy with `nbthread 1`
#
# Each proxy stands in front of the benchmark's nginx upstream; wrk -c16 warms it up for 3 s,
# then strace counts its system calls over 5 s of load (strace slows it, so only the calls per
# request count, not the rate). One table per proxy. Needs strace, nginx, haproxy, wrk.
source "$(dirname "$0")/single.sh"

# Counts one proxy's system calls per request over a load, strace attached after a warm-up.
count() {
    local proxy=$1 command
    proxy_command "$proxy"
    SLUICE_LOG=warn "${command[@]}" >"$work/$proxy.out" 2>&1 &
    local pid=$!
    pids+=($pid)
    wait_up
    load 3 >/dev/null
    # -f: every thread of the process (sluice's workers, HAProxy's threads).
    strace -c -f -qq -o "$work/strace.txt" -p "$pid" &
    local tracer=$!
    sleep 1
    local out requests
    out=$(load 5)
    kill -INT $tracer 2>/dev/null || true
    wait $tracer 2>/dev/null || true
    requests=$(served "$out")
    echo "$proxy $scenario: $requests requests; system calls per request:"
    awk -v n="$requests" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {
        printf "  %-16s %6.2f\n", $NF, $4 / n }' "$work/strace.txt" | sort -k2 -rn | head -12
    awk -v n="$requests" '$NF == "total" { printf "  %-16s %6.2f\n", "all", $4 / n }' "$work/strace.txt"
    stop $pid
}

each_proxy
