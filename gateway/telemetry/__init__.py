"""What the gateway tells the outside: counters in shared memory (`stats`), their Prometheus
exposition and health endpoints (`metrics`), `firezone-gw show` (`show`), the private runtime
directory they live in (`runtime_dir`), logging (`logsetup`) and systemd notifications
(`sdnotify`)."""
