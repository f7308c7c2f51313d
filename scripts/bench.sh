#!/bin/sh
# Half-Tunnel benchmark (issue 7): builds release binaries, then (as root) creates sets of
# throwaway network namespaces — the direct path (kernel forwarding client → lan →
# relay-a → exit → inet) and the tunnel (vpn-client with its TUN, exit-node) once per leg
# mode: both legs through the TLS relays, and both legs straight to the exit terminating
# TLS, the relay namespaces only forwarding (--legs relays|direct|both, default both) —
# and measures each figure on every path several times: TCP bulk
# throughput and CPU, UDP throughput/loss, request/response and connect latency, new
# flows per second, memory per idle flow. Prints a table (median, min–max, tunnel/direct
# ratio) and writes target/bench.json. Nothing is sent outside those namespaces.
#
#   sudo scripts/bench.sh [--quick] [--runs N] [--secs S] [--mtu M] [--json FILE]
#                         [--only tcp,udp,rr,crr,rate,mem] [--perf DIR]
#                         [--legs relays|direct|both] [--peers tun2proxy,boringtun|all]
#
# Needs cargo, iproute2 and iperf3 (`apt-get install -y iperf3`); --perf needs perf
# (`apt-get install -y linux-perf`). --quick is a CI smoke (one short run, < 1 min).
# --peers measures other tools on copies of the direct path beside ours: tun2proxy
# (`cargo install --locked tun2proxy && apt-get install -y microsocks`) and boringtun
# (`cargo install --locked boringtun-cli && apt-get install -y wireguard-tools`).
set -eu
cd "$(dirname "$0")/.."
if ! command -v iperf3 >/dev/null 2>&1; then
    echo "bench.sh: iperf3 is missing; install it with: apt-get install -y iperf3" >&2
    exit 1
fi
build='cargo build --release -p exit-node -p vpn-client -p e2e'
if [ -n "${SUDO_USER:-}" ] && [ "$(id -u)" = 0 ] && ! command -v cargo >/dev/null 2>&1; then
    # Build as the invoking user, whose PATH has cargo.
    sudo -u "$SUDO_USER" -H sh -c "cd \"\$0\" && $build" "$PWD"
else
    $build
fi
bench="${CARGO_TARGET_DIR:-target}/release/ht-bench"
# 10,000 idle flows need that many descriptors in the flow holder, the server and the exit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(id -u)" != 0 ]; then
    exec sudo sh -c 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"' "$bench" "$@"
fi
exec "$bench" "$@"
