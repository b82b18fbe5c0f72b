"""DNS on the gateway: a forwarder for the peers' queries (sans-I/O here, sockets elsewhere)."""
