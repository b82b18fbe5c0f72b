"""Two gateways for one site: the state a standby needs to continue the active's sessions.

`codec`: the state changes and their encoding; `channel`: the authenticated, encrypted,
replay-safe, rate-bounded stream of them (sans-I/O); `replicator`: the process side.
"""
