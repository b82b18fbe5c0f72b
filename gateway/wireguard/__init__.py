"""Sans-I/O WireGuard protocol core: bytes and a clock in, bytes to send out."""
