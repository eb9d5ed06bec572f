# The setup bench/instructions.sh and bench/syscalls.sh share, sourced by each: the arguments
# (BINARY, SCENARIO, PROXY...), the load benchmark's configs for one process of each proxy, its
# nginx upstream, the load, and each proxy's command line.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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


# The command line that runs proxy $1 as one process, in the array `command`.
proxy_command() {
    case $1 in
    sluice) command=("$binary" --config "$work/sluice.toml") ;;
    nginx) command=(nginx -p "$work" -e "$work/proxy.err" -c "$work/nginx.conf") ;;
    haproxy) command=(haproxy -db -f "$work/haproxy.cfg") ;;
    *) echo "unknown proxy: $1 (sluice, nginx or haproxy)" >&2; exit 2 ;;
    esac
}

# Waits until the proxy answers on its port.
wait_up() {
    for _ in $(seq 150); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.2
    done
}

# Waits until the port is free again, before the next proxy binds it.
wait_down() {
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" || break
        sleep 0.1
    done
}

# The requests wrk says it made, from its output in $1.
served() {
    echo "$1" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p'
}

# Stops process $1 and waits until the port is free.
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    wait_down
}

# Counts each proxy named on the command line, one after the other, with `count`.
each_proxy() {
    for proxy in "${proxies[@]}"; do
        count "$proxy"
    done
}
