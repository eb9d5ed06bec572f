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
source "$(dirname "$0")/single.sh"

# Counts one proxy: started under callgrind with counting off, warmed up, then counted.
count() {
    local proxy=$1 command
    proxy_command "$proxy"
    rm -f "$work"/callgrind.out*
    SLUICE_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$work/callgrind.out" "${command[@]}" \
        >"$work/$proxy.out" 2>"$work/valgrind.log" &
    local vg=$!
    pids+=($vg)
    wait_up
    load 3 >/dev/null
    callgrind_control -i on $vg >/dev/null 2>&1
    callgrind_control -z $vg >/dev/null 2>&1
    local out requests total
    out=$(load 5)
    callgrind_control -d $vg >/dev/null 2>&1
    requests=$(served "$out")
    # The dump just asked for: the highest-numbered file (HAProxy's threads may add more).
    local dump
    dump=$(ls -t "$work"/callgrind.out.* | head -1)
    total=$(callgrind_annotate "$dump" | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
    printf '%-8s %-6s requests: %s  instructions: %s  per request: %s\n' \
        "$proxy" "$scenario" "$requests" "$total" "$((total / requests))"
    # To read the profile with callgrind_annotate: PROFILE=FILE keeps sluice's.
    if [[ $proxy == sluice && -n ${PROFILE:-} ]]; then cp "$dump" "$PROFILE"; fi
    stop $vg
}

each_proxy
