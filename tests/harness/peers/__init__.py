"""Independent vhost-user peers for interop tests and benchmarks (DPDK testpmd)."""
