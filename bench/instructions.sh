#!/usr/bin/env bash
# User-space instructions per request, under callgrind: deterministic to a fraction of a percent
# whatever else the machine is doing, so it shows steps too small for req/s to show.
#
#   bench/instructions.sh [BINARY [SCENARIO [PROXY...]]]
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
# then counting runs for 5 s of load. One line per proxy. Needs valgrind, nginx, haproxy, wrk.
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

# Counts one proxy: started under callgrind with counting off, warmed up, then counted.
count() {
    local proxy=$1 command
    case $proxy in
    sluice) command=("$binary" --config "$work/sluice.toml") ;;
    nginx) command=(nginx -p "$work" -e "$work/proxy.err" -c "$work/nginx.conf") ;;
    haproxy) command=(haproxy -db -f "$work/haproxy.cfg") ;;
    *) echo "unknown proxy: $proxy (sluice, nginx or haproxy)" >&2; exit 2 ;;
    esac
    rm -f "$work"/callgrind.out*
    SLUICE_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$work/callgrind.out" "${command[@]}" \
        >"$work/$proxy.out" 2>"$work/valgrind.log" &
    local vg=$!
    pids+=($vg)
    for _ in $(seq 150); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.2
    done
    load 3 >/dev/null
    callgrind_control -i on $vg >/dev/null 2>&1
    callgrind_control -z $vg >/dev/null 2>&1
    local out requests total
    out=$(load 5)
    callgrind_control -d $vg >/dev/null 2>&1
    requests=$(echo "$out" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
    # The dump just asked for: the highest-numbered file (HAProxy's threads may add more).
    local dump
    dump=$(ls -t "$work"/callgrind.out.* | head -1)
    total=$(callgrind_annotate "$dump" | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
    printf '%-8s %-6s requests: %s  instructions: %s  per request: %s\n' \
        "$proxy" "$scenario" "$requests" "$total" "$((total / requests))"
    # To read the profile with callgrind_annotate: PROFILE=FILE keeps sluice's.
    if [[ $proxy == sluice && -n ${PROFILE:-} ]]; then cp "$dump" "$PROFILE"; fi
    kill $vg 2>/dev/null || true
    wait $vg 2>/dev/null || true
    # The port is free again before the next proxy binds it.
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" || break
        sleep 0.1
    done
}

for proxy in "${proxies[@]}"; do
    count "$proxy"
done
