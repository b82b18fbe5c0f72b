"""What a resource is, as the config declares it and every layer above uses it.

`resource` (a named network or DNS name pattern with filters), `filters` (protocols and port
ranges), `names` (DNS name patterns) and `proxy_ranges` (the address ranges DNS resources are
reached through). Pure types and parsers, below the config and the decisions (`policy/`,
`dns/`, `nat/`), so each of those can take them without importing another.
"""
