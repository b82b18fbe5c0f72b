"""The multiprocess data plane: supervisor, TUN workers, crypto process and UDP process."""
