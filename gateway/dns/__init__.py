"""DNS on the gateway: the peers' queries forwarded and DNS resources answered.

Sans-I/O: `forwarder`, `resources`, `proxy`; the asyncio sockets: `server`; the process
around them: `gateway/dataplane/dnsmain.py`.
"""
