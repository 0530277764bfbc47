"""What the tests and the benchmarks drive vswitchd and its peers with, and the
helpers they share; no tests here.

* switch: ``Vswitchd``, the daemon under test as a real process on a config
  built from a port mapping;
* frontend: a vhost-user front-end written in Python that builds guest
  memory and split rings by hand, hostile ones included;
* peers: DPDK testpmd (virtio-user and vhost ports);
* guests: QEMU guests on a small Debian-kernel image;
* linux: network namespaces and links;
* traffic: frame builders, connecting test devices, exchanges and waits;
* packets: TCP/IP frames with partial checksums and TSO headers;
* racer: a C process that rewrites guest memory while the switch reads it;
* schema: a config text judged by the JSON Schema and by the validator.

Tests import it as ``tests.harness``; the benchmarks run from the repository
root (``python -m bench.loopback``) and import it the same way. It is not part
of the installed distribution (setup.py packages only ``vswitch``).
"""
