#!/bin/sh
# Half-Tunnel in one command: builds the binaries, then (as root) creates throwaway network
# namespaces (client, LAN router, relay A for Domain A, relay B for Domain B, exit node,
# "internet"), brings `vpn-client up` in the client namespace, resolves a name and moves a
# file each way through the tunnel, shows that the up direction crossed only relay A and
# the down direction only relay B, prints `vpn-client status`, and deletes everything.
# Nothing is sent outside those namespaces.
#
#   sudo scripts/demo.sh [--mib N]     (needs cargo, iproute2; N defaults to 256)
set -eu
cd "$(dirname "$0")/.."
# The test profile (optimised) shares its build with `cargo test`.
if [ -n "${SUDO_USER:-}" ] && [ "$(id -u)" = 0 ] && ! command -v cargo >/dev/null 2>&1; then
    # Build as the invoking user, whose PATH has cargo.
    sudo -u "$SUDO_USER" -H sh -c 'cd "$0" && cargo build --profile test --bins -p exit-node -p vpn-client -p e2e' "$PWD"
else
    cargo build --profile test --bins -p exit-node -p vpn-client -p e2e
fi
demo="${CARGO_TARGET_DIR:-target}/debug/ht-demo"
if [ "$(id -u)" != 0 ]; then
    exec sudo "$demo" "$@"
fi
exec "$demo" "$@"
