"""Stateful NAT for DNS resources: peers' flows to proxy addresses, mapped to real addresses."""
