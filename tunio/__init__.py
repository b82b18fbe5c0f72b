"""TUN devices (multi-queue) and their netlink configuration."""
