#!/usr/bin/env bash
# User-space instructions per proxied request, under callgrind: deterministic to a fraction of a
# percent whatever else the machine is doing, so it shows steps too small for req/s to show.
#
#   bench/instructions.sh [BINARY [SCENARIO]]   (target/release/sluice, pass)
#
# sluice (1 worker, the pass or reject config) in front of the benchmark's nginx upstream;
# wrk -c16 warms it up for 3 s, then counting runs for 5 s of load. Needs valgrind, nginx, wrk.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
binary=${1:-$root/target/release/sluice}
scenario=${2:-pass}
case $scenario in
pass) keys=1000 ;;
reject) keys=10 ;;
*) echo "unknown scenario: $scenario (pass or reject)" >&2; exit 2 ;;
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

# The same upstream and sluice configs as the load benchmark's.
(cd "$root/bench" && python3 -c "
import run
work, up, port, admin = '$work', $up, $port, $admin
open(f'{work}/upstream.conf', 'w').write(run.upstream_conf(up, work))
open(f'{work}/sluice.toml', 'w').write(run.sluice_conf(port, admin, up, 1, '$scenario'))
")

nginx -p "$work" -e "$work/upstream.err" -c "$work/upstream.conf" &
pids+=($!)
SLUICE_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/callgrind.out" "$binary" --config "$work/sluice.toml" \
    2>"$work/valgrind.log" &
vg=$!
pids+=($vg)
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.2
done

load() {
    wrk -t1 -c16 -d"$1"s -s "$root/bench/keys.lua" "http://127.0.0.1:$port/v1/candidates" -- $keys
}
load 3 >/dev/null
callgrind_control -i on $vg >/dev/null 2>&1
callgrind_control -z $vg >/dev/null 2>&1
out=$(load 5)
callgrind_control -d $vg >/dev/null 2>&1
requests=$(echo "$out" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
total=$(callgrind_annotate "$work/callgrind.out.1" | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
echo "requests: $requests  instructions: $total  per request: $((total / requests))"
# To read the profile with callgrind_annotate: PROFILE=FILE keeps it.
if [[ -n ${PROFILE:-} ]]; then cp "$work/callgrind.out.1" "$PROFILE"; fi
