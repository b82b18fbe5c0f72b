"""firezone-gw: a WireGuard gateway for Linux."""
