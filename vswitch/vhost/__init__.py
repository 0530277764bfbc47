"""The vhost-user backend: wire codec, per-connection session, socket transport."""
