#!/usr/bin/env bash
# Installs the load benchmark's peers, load generator, Redis (for --stores) and openssl (the
# tls scenario's certificate) from Debian packages (bookworm: nginx 1.22, HAProxy 2.6, wrk 4.1,
# Redis 7.0, OpenSSL 3.0). RUNLEVEL=1 keeps the packages from starting services.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
fi
# sed reads all its input: `head` would close the pipe early and fail the script with SIGPIPE.
nginx -v 2>&1
haproxy -v 2>&1 | sed -n 1p
wrk --version 2>&1 | sed -n 1p || true
redis-server --version
openssl version
# The tls scenario needs nginx's TLS module (nginx-light has it).
if ! nginx -V 2>&1 | grep with-http_ssl_module >/dev/null; then
    echo "nginx lacks http_ssl_module: install nginx-light" >&2
    exit 1
fi
