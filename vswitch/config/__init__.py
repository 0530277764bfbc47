"""Configuration loading and validation.

The configuration is a single YAML document; every key is optional except
``ports`` (docs/configuration.md is the full reference, and
config/vswitch.schema.json a JSON Schema of it for editors)::

    version: 1                 # default 1; only 1 is accepted
    runtime_dir: /run/vswitch  # default /run/vswitch; absolute path
    control:
      group: vswitch           # group (name or gid) that may use the control socket
    metrics:
      enabled: true            # default true
      listen: 127.0.0.1:9479   # "IP:PORT" or "[IPv6]:PORT"; default 127.0.0.1:9479
    datapath:
      workers: 1               # 1..64, default 1
      mode: adaptive           # poll | event | adaptive (default)
      cpus: [2, 3]             # pin worker i to cpus[i % len(cpus)]; default unpinned
    limits:                    # what a front-end may make the daemon hold
      message_timeout: 10      # s to complete a message once begun (and the first one); 0.1..3600
      guest_memory_per_port: 1TiB   # guest memory one port may map; bytes or "<n>[KMGT]iB"
      guest_memory_total: 32TiB     # all ports together; at least guest_memory_per_port
    defaults:                  # for every vhost-user port that does not set them:
      queues: 2                # mode queues mtu socket_owner socket_group socket_mode
      socket_group: kvm        # mrg_rxbuf event_idx indirect_desc in_order offloads memory_slots allow_file_memory
    ports:                     # required (may be {}); mapping name -> port
      vm1:
        type: vhost-user       # required: vhost-user | tap | vxlan
        mode: server           # server (default): we listen | client: we connect
        socket: /run/vswitch/vm1.sock  # default {runtime_dir}/{name}.sock
        queues: 2              # queue pairs offered, 1..64, default 1
        mtu: 1500              # 68..65535, default: not advertised
        mac: "52:54:00:12:34:56"  # static FDB entry; unicast, not all-zero
        socket_owner: qemu     # server mode only: user name or uid
        socket_group: kvm      # server mode only: group name or gid
        socket_mode: 0660      # server mode only; default 0660; needs 0600
        mrg_rxbuf: true        # offer VIRTIO_NET_F_MRG_RXBUF (default true)
        event_idx: true        # offer VIRTIO_RING_F_EVENT_IDX (default true)
        indirect_desc: true    # offer VIRTIO_RING_F_INDIRECT_DESC (default true)
        in_order: true         # offer VIRTIO_F_IN_ORDER (default true)
        offloads: true         # offer checksum/TSO features (default true)
        memory_slots: true     # offer CONFIGURE_MEM_SLOTS (ADD/REM_MEM_REG; default true)
        allow_file_memory: false  # map guest memory in files outside memfd/tmpfs/hugetlbfs
      uplink:
        type: tap
        ifname: vsw-up0        # at most 15 bytes; default the port name
        queues: 2
        mtu: 1500              # default: keep the device's MTU
        create: true           # false: attach to an existing persistent TAP only
        mac: "02:00:00:00:00:01"
      vx0:
        type: vxlan            # docs/vxlan.md
        local: 192.0.2.1       # our IPv4/IPv6 address on this host (the UDP socket binds it)
        remotes: [192.0.2.2]   # peer VTEPs, same family, 1..64, no duplicates, not local
        vni: 100               # 1..16777215
        udp_port: 4789         # default 4789 (IANA)
        mtu: 1450              # default: no limit; frames with a larger L3 size are dropped
    security:
      seccomp: true            # default true: the daemon confines itself with a seccomp filter
    debug: false               # default false: true enables control commands meant for tests

Every port type also takes the forwarding policies (POLICY_KEYS; see
docs/configuration.md): ``vlan``, ``allowed_macs``, ``storm_control``,
``ingress_policing``, ``egress_policing`` and ``mirror``, parsed into
VlanConfig, StormControlConfig, PolicerConfig and MirrorConfig with their
defaults filled in (rates in bits/s, bursts in bytes).

The package, by concern:

* bounds.py: every numeric bound (MTU, queues, memory slots, VLAN ids, ...),
  shared with the vhost-user session and the fd budget;
* model.py: the dataclasses a valid file becomes, their defaults and
  enumerations;
* units.py: rates, bursts and sizes written with units;
* yamlnodes.py: reading YAML nodes with their line and column, and
  ConfigError / ConfigIssue;
* validate.py: the schema and the checks across keys, load_config() and
  parse_config().

The names below are the package's public interface: import them from
``vswitch.config``.
"""

from __future__ import annotations

from . import bounds
from .model import (
    DATAPATH_MODES,
    FEATURE_KEYS,
    MIRROR_DIRECTIONS,
    POLICER_ACTIONS,
    POLICY_KEYS,
    PORT_MODES,
    PORT_TYPES,
    SOCKET_PERMISSION_KEYS,
    TAP_IO_METHODS,
    TRUST_KEYS,
    VLAN_MODES,
    Config,
    ControlConfig,
    DatapathConfig,
    FdbConfig,
    LimitsConfig,
    MetricsConfig,
    MirrorConfig,
    PolicerConfig,
    PortConfig,
    PortPolicies,
    SecurityConfig,
    StaticFdbEntry,
    StormControlConfig,
    TapPortConfig,
    VhostUserPortConfig,
    VlanConfig,
    VxlanPortConfig,
    fdb_max_entries,
    port_vlan,
    static_mac,
    vlan_ranges,
)
from .units import parse_burst, parse_rate, parse_size
from .validate import load_config, parse_config
from .yamlnodes import ConfigError, ConfigIssue

__all__ = [
    "bounds",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ControlConfig",
    "DatapathConfig",
    "FdbConfig",
    "SecurityConfig",
    "LimitsConfig",
    "MetricsConfig",
    "PortConfig",
    "PortPolicies",
    "StaticFdbEntry",
    "VhostUserPortConfig",
    "TapPortConfig",
    "VlanConfig",
    "StormControlConfig",
    "PolicerConfig",
    "MirrorConfig",
    "VxlanPortConfig",
    "DATAPATH_MODES",
    "FEATURE_KEYS",
    "MIRROR_DIRECTIONS",
    "POLICER_ACTIONS",
    "POLICY_KEYS",
    "PORT_MODES",
    "PORT_TYPES",
    "SOCKET_PERMISSION_KEYS",
    "TAP_IO_METHODS",
    "TRUST_KEYS",
    "VLAN_MODES",
    "fdb_max_entries",
    "port_vlan",
    "static_mac",
    "vlan_ranges",
    "parse_rate",
    "parse_burst",
    "parse_size",
    "load_config",
    "parse_config",
]
