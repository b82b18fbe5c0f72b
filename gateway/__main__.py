"""`python -m gateway` is `firezone-gw`."""

from gateway.cli import main

main()
