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
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
binary=${1:-$root/target/release/sluice}
scenario=${2:-pass}
shift $(($# > 2 ? 2 : $#))
proxies=("${@:-sluice}")
script=$root/bench/keys.lua mode=
case $scenario in
pass) keys=1000 ;;
reject) keys=10 ;;
idem-off) keys=1000 ;;
idem-unique) keys=1000 script=$root/bench/idempotency.lua mode=unique ;;
idem-replay) keys=1000 script=$root/bench/idempotency.lua mode=replay ;;
*) echo "unknown scenario: $scenario (pass, reject, idem-off, idem-unique, idem-replay)" >&2; exit 2 ;;
esac
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/tmp"
up=19500 port=19501 admin=19502

# The same upstream and proxy configs as the load benchmark's.
(cd "$root/bench" && python3 -c "
import run
work, up, port, admin, scenario = '$work', $up, $port, $admin, '$scenario'
open(f'{work}/upstream.conf', 'w').write(run.upstream_conf(up, work))
idem = scenario.startswith('idem-')
scenario = 'pass' if idem else scenario
conf = run.sluice_conf(port, admin, up, 1, scenario)
if idem:
    conf += '[[routes]]\npath = \"/\"\n[routes.idempotency]\nenabled = true\nmethods = [\"GET\"]\n'
open(f'{work}/sluice.toml', 'w').write(conf)
nginx = run.nginx_conf(port, up, 1, work, scenario).replace('daemon off;', 'daemon off;\nmaster_process off;', 1)
open(f'{work}/nginx.conf', 'w').write(nginx.replace('/nginx.pid', '/proxy.pid'))
open(f'{work}/haproxy.cfg', 'w').write(run.haproxy_conf(port, up, 1, scenario))
")

nginx -p "$work" -e "$work/upstream.err" -c "$work/upstream.conf" &
pids+=($!)

load() {
    wrk -t1 -c16 -d"$1"s -s "$script" "http://127.0.0.1:$port/v1/candidates" -- $keys $mode
}

# Counts one proxy's system calls per request over a load, strace attached after a warm-up.
count() {
    local proxy=$1 command
    case $proxy in
    sluice) command=("$binary" --config "$work/sluice.toml") ;;
    nginx) command=(nginx -p "$work" -e "$work/proxy.err" -c "$work/nginx.conf") ;;
    haproxy) command=(haproxy -db -f "$work/haproxy.cfg") ;;
    *) echo "unknown proxy: $proxy (sluice, nginx or haproxy)" >&2; exit 2 ;;
    esac
    SLUICE_LOG=warn "${command[@]}" >"$work/$proxy.out" 2>&1 &
    local pid=$!
    pids+=($pid)
    for _ in $(seq 150); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.2
    done
    load 3 >/dev/null
    # -f: every thread of the process (sluice's workers, HAProxy's threads).
    strace -c -f -qq -o "$work/strace.txt" -p "$pid" &
    local tracer=$!
    sleep 1
    local out requests
    out=$(load 5)
    kill -INT $tracer 2>/dev/null || true
    wait $tracer 2>/dev/null || true
    requests=$(echo "$out" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
    echo "$proxy $scenario: $requests requests; system calls per request:"
    awk -v n="$requests" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {
        printf "  %-16s %6.2f\n", $NF, $4 / n }' "$work/strace.txt" | sort -k2 -rn | head -12
    awk -v n="$requests" '$NF == "total" { printf "  %-16s %6.2f\n", "all", $4 / n }' "$work/strace.txt"
    kill $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" || break
        sleep 0.1
    done
}

for proxy in "${proxies[@]}"; do
    count "$proxy"
done
