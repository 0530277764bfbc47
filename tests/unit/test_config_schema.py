"""config/vswitch.schema.json and vswitch.config agree on what a valid file is.

Every example below is judged by both the JSON Schema (Draft 2020-12, on the
document as PyYAML's safe_load reads it, the way vswitchd reads it) and by
parse_config(); both must accept the good ones and reject the bad ones.
Problems that only the validator can see (things on this host, and checks
across ports) are listed separately: the schema accepts those documents and
the validator rejects them with a given message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from tests.harness.schema import ROOT, SCHEMA, doc, schema_errors, validator_errors
from vswitch import config as cfg
from vswitch.config import bounds, validate


# --------------------------------------------------------------------------
# Examples


LIBVIRT = """
# QEMU run by libvirt as libvirt-qemu (uid/gid 64055 on Debian and Ubuntu).
version: 1
runtime_dir: /run/vswitch
control: {group: 0}
metrics: {listen: "127.0.0.1:9479"}
datapath: {workers: 2, mode: adaptive}
defaults:
  queues: 2
  socket_group: 64055
  socket_mode: 0660
ports:
  vm1: {type: vhost-user, mac: "52:54:00:12:34:56"}
  vm2: {type: vhost-user, mac: "52:54:00:12:34:57", queues: 4}
  uplink: {type: tap, ifname: vsw-up0, queues: 2}
"""

GOOD = {
    "minimal": "ports: {}\n",
    "first-issue-shape": """
        runtime_dir: /run/vs
        ports:
          vm1: {type: vhost-user, mode: server, socket: /run/vs/one.sock, queues: 2}
          vm2: {type: vhost-user, mode: client}
        datapath: {workers: 4}
        """,
    "libvirt": LIBVIRT,
    "everything": """
        version: 1
        runtime_dir: /run/vswitch
        control: {group: root}
        metrics: {enabled: false, listen: "[::1]:9100"}
        datapath: {workers: 2, mode: poll, cpus: [0]}
        defaults:
          mode: server
          queues: 2
          mtu: 1500
          socket_owner: root
          socket_group: 0
          socket_mode: "0640"
          mrg_rxbuf: false
          event_idx: false
          indirect_desc: false
          offloads: false
        ports:
          vm1:
            type: vhost-user
            socket: /run/vswitch/a.sock
            queues: 64
            mtu: 9000
            mac: "52:54:00:AB:cd:EF"
            socket_owner: 0
            socket_group: root
            socket_mode: 0600
            mrg_rxbuf: true
            event_idx: true
            indirect_desc: true
            offloads: true
          vm2: {type: vhost-user, mode: client, mtu: 68}
          up: {type: tap, ifname: vsw-up0, queues: 4, mtu: 65535, create: false, mac: "02:00:00:00:00:01"}
        """,
    "socket-mode-forms": """
        ports:
          a: {type: vhost-user, socket_mode: 0777}
          b: {type: vhost-user, socket_mode: "660"}
          c: {type: vhost-user, socket_mode: "0o600"}
          d: {type: vhost-user, socket_mode: 384}
        """,
    "metrics-listen-forms": "metrics: {listen: '0.0.0.0:1'}\nports: {}\n",
    "metrics-listen-v6": "metrics: {listen: '[2001:db8::1]:65535'}\nports: {}\n",
    "client-defaults-ignored": """
        defaults: {socket_group: 0, socket_mode: 0600}
        ports:
          vm1: {type: vhost-user, mode: client}
        """,
    "tap-default-ifname": "ports: {uplink0: {type: tap}}\n",
    "port-names": "ports: {A.b-c_9: {type: vhost-user}, '9': {type: vhost-user}}\n",
}

# name -> (document, a part of the validator's message); the schema must
# reject these too.
BAD = {
    "version-2": ("version: 2\nports: {}\n", "version: unsupported configuration version 2"),
    "version-string": ("version: '1'\nports: {}\n", "version: must be an integer"),
    "runtime-dir-relative": ("runtime_dir: run/vs\nports: {}\n", "runtime_dir: must be an absolute path"),
    "unknown-top-key": ("ports: {}\nportz: {}\n", "unknown key 'portz'"),
    "missing-ports": ("datapath: {workers: 1}\n", "missing required key 'ports'"),
    "ports-null": ("ports:\n", "ports: must be a mapping"),
    "ports-list": ("ports: [vm1]\n", "ports: must be a mapping"),
    "control-unknown-key": ("control: {owner: 0}\nports: {}\n", "control.owner: unknown key"),
    "control-group-negative": ("control: {group: -1}\nports: {}\n", "control.group: gid must be 0..4294967294"),
    "control-group-bool": ("control: {group: true}\nports: {}\n", "control.group: must be a group name"),
    "metrics-unknown-key": ("metrics: {port: 9479}\nports: {}\n", "metrics.port: unknown key"),
    "metrics-enabled-string": ("metrics: {enabled: 'yes'}\nports: {}\n", "metrics.enabled: must be true or false"),
    "metrics-hostname": ("metrics: {listen: 'localhost:9479'}\nports: {}\n", "host must be an IPv4 or IPv6 address"),
    "metrics-port-0": ("metrics: {listen: '127.0.0.1:0'}\nports: {}\n", "port must be 1..65535 (got 0"),
    "metrics-port-65536": ("metrics: {listen: '127.0.0.1:65536'}\nports: {}\n", "port must be 1..65535 (got 65536"),
    "metrics-no-port": ("metrics: {listen: '127.0.0.1'}\nports: {}\n", 'must be "HOST:PORT"'),
    "metrics-v6-unbracketed": ("metrics: {listen: '::1:9479'}\nports: {}\n", "must be written in brackets"),
    "metrics-v4-bracketed": ("metrics: {listen: '[127.0.0.1]:9479'}\nports: {}\n", "brackets are only for IPv6"),
    "metrics-bad-octet": ("metrics: {listen: '256.0.0.1:9479'}\nports: {}\n", "host must be an IPv4 or IPv6"),
    "datapath-unknown-key": ("datapath: {threads: 2}\nports: {}\n", "datapath.threads: unknown key"),
    "workers-0": ("datapath: {workers: 0}\nports: {}\n", "datapath.workers: must be 1..64 (got 0)"),
    "workers-65": ("datapath: {workers: 65}\nports: {}\n", "datapath.workers: must be 1..64 (got 65)"),
    "datapath-mode": ("datapath: {mode: sleepy}\nports: {}\n", "datapath.mode: must be one of: poll, event, adaptive"),
    "cpus-empty": ("datapath: {cpus: []}\nports: {}\n", "datapath.cpus: must not be empty"),
    "cpus-not-list": ("datapath: {cpus: 3}\nports: {}\n", "datapath.cpus: must be a list"),
    "cpus-negative": ("datapath: {cpus: [-1]}\nports: {}\n", "datapath.cpus[0]: must be 0..4095 (got -1)"),
    "cpus-4096": ("datapath: {cpus: [4096]}\nports: {}\n", "datapath.cpus[0]: must be 0..4095 (got 4096)"),
    "cpus-twice": ("datapath: {cpus: [0, 0]}\nports: {}\n", "datapath.cpus[1]: cpu 0 is listed twice"),
    "defaults-unknown-key": ("defaults: {socket: /x.sock}\nports: {}\n", "defaults.socket: unknown key"),
    "defaults-queues": ("defaults: {queues: 0}\nports: {}\n", "defaults.queues: must be 1..64 (got 0)"),
    "defaults-mode": ("defaults: {mode: listen}\nports: {}\n", "defaults.mode: must be one of: server, client"),
    "defaults-feature": ("defaults: {offloads: 1}\nports: {}\n", "defaults.offloads: must be true or false"),
    "defaults-socket-mode": ("defaults: {socket_mode: 0440}\nports: {}\n",
                             "defaults.socket_mode: must give the owner read and write permission (0600)"),
    "port-name": ("ports: {-vm: {type: vhost-user}}\n", "invalid port name '-vm'"),
    "port-name-long": ("ports: {%s: {type: vhost-user}}\n" % ("a" * 33), "invalid port name"),
    "port-no-type": ("ports: {vm1: {queues: 1}}\n", "ports.vm1: missing required key 'type'"),
    "port-type": ("ports: {vm1: {type: geneve}}\n", "unsupported port type 'geneve'"),
    "port-unknown-key": ("ports: {vm1: {type: vhost-user, queus: 2}}\n", "ports.vm1.queus: unknown key"),
    "port-mode": ("ports: {vm1: {type: vhost-user, mode: serve}}\n", "ports.vm1.mode: must be one of: server, client"),
    "queues-0": ("ports: {vm1: {type: vhost-user, queues: 0}}\n", "ports.vm1.queues: must be 1..64 (got 0)"),
    "queues-65": ("ports: {vm1: {type: vhost-user, queues: 65}}\n", "ports.vm1.queues: must be 1..64 (got 65)"),
    "queues-string": ("ports: {vm1: {type: vhost-user, queues: '2'}}\n", "must be an integer 1..64 (got string '2')"),
    "mtu-67": ("ports: {vm1: {type: vhost-user, mtu: 67}}\n", "ports.vm1.mtu: must be 68..65535 (got 67)"),
    "mtu-65536": ("ports: {vm1: {type: vhost-user, mtu: 65536}}\n", "ports.vm1.mtu: must be 68..65535 (got 65536)"),
    "socket-relative": ("ports: {vm1: {type: vhost-user, socket: vm1.sock}}\n", "ports.vm1.socket: must be an absolute path"),
    "socket-too-long": ("ports: {vm1: {type: vhost-user, socket: /%s.sock}}\n" % ("s" * 102),
                        "socket path too long for AF_UNIX: 108 bytes, at most 107"),
    "mac-multicast": ("ports: {vm1: {type: vhost-user, mac: '01:00:5e:00:00:01'}}\n", "must be a unicast MAC address"),
    "mac-zero": ("ports: {vm1: {type: vhost-user, mac: '00:00:00:00:00:00'}}\n", "must not be the all-zero MAC"),
    "mac-format": ("ports: {vm1: {type: vhost-user, mac: '52-54-00-12-34-56'}}\n", "must be a MAC address of 6 hex bytes"),
    "mac-short": ("ports: {vm1: {type: vhost-user, mac: '52:54:00:12:34'}}\n", "must be a MAC address of 6 hex bytes"),
    "socket-owner-bool": ("ports: {vm1: {type: vhost-user, socket_owner: false}}\n", "must be a user name or a numeric uid"),
    "socket-owner-empty": ("ports: {vm1: {type: vhost-user, socket_owner: ''}}\n", "must be a user name or a numeric uid (got an empty string)"),
    "socket-owner-big": ("ports: {vm1: {type: vhost-user, socket_owner: 4294967295}}\n", "uid must be 0..4294967294"),
    "socket-group-list": ("ports: {vm1: {type: vhost-user, socket_group: [kvm]}}\n", "must be a group name or a numeric gid"),
    "socket-mode-decimal": ("ports: {vm1: {type: vhost-user, socket_mode: 660}}\n", "YAML reads 660 without a leading 0"),
    "socket-mode-no-owner-rw": ("ports: {vm1: {type: vhost-user, socket_mode: 0460}}\n",
                                "must give the owner read and write permission (0600), else nobody can connect "
                                "as the owner (got 0460)"),
    "socket-mode-string-no-owner-rw": ("ports: {vm1: {type: vhost-user, socket_mode: '0066'}}\n", "(got 0066)"),
    "socket-mode-word": ("ports: {vm1: {type: vhost-user, socket_mode: rw-rw----}}\n", "must be a permission mode of 3 octal digits"),
    "socket-mode-4-digits": ("ports: {vm1: {type: vhost-user, socket_mode: '1660'}}\n", "must be a permission mode of 3 octal digits"),
    "client-socket-owner": ("ports: {vm1: {type: vhost-user, mode: client, socket_owner: 0}}\n",
                            "ports.vm1.socket_owner: only for server-mode ports: in client mode QEMU creates the socket"),
    "client-socket-mode": ("ports: {vm1: {type: vhost-user, mode: client, socket_mode: 0660}}\n",
                           "ports.vm1.socket_mode: only for server-mode ports"),
    "feature-string": ("ports: {vm1: {type: vhost-user, mrg_rxbuf: 'off'}}\n", "ports.vm1.mrg_rxbuf: must be true or false"),
    "feature-int": ("ports: {vm1: {type: vhost-user, event_idx: 0}}\n", "ports.vm1.event_idx: must be true or false"),
    "feature-null": ("ports: {vm1: {type: vhost-user, indirect_desc: null}}\n", "ports.vm1.indirect_desc: must be true or false"),
    "tap-ifname-long": ("ports: {up: {type: tap, ifname: abcdefghijklmnop}}\n", "ports.up.ifname: not a valid interface name: at most 15 bytes"),
    "tap-ifname-slash": ("ports: {up: {type: tap, ifname: a/b}}\n", "ports.up.ifname: not a valid interface name"),
    "tap-unknown-key": ("ports: {up: {type: tap, socket: /x.sock}}\n", "ports.up.socket: unknown key"),
    "tap-create": ("ports: {up: {type: tap, create: 'no'}}\n", "ports.up.create: must be true or false"),
    "tap-mtu": ("ports: {up: {type: tap, mtu: 70000}}\n", "ports.up.mtu: must be 68..65535 (got 70000)"),
    "tap-mac": ("ports: {up: {type: tap, mac: '33:33:00:00:00:01'}}\n", "ports.up.mac: must be a unicast MAC"),
    "tap-feature-key": ("ports: {up: {type: tap, offloads: false}}\n", "ports.up.offloads: unknown key"),
}

# name -> (document, part of the validator's message, and whether the host
# checks must be on).  The schema accepts these; the validator does not.
VALIDATOR_ONLY = {
    "unknown-user": ("ports: {vm1: {type: vhost-user, socket_owner: no-such-user-vswitch-test}}\n",
                     "ports.vm1.socket_owner: unknown user 'no-such-user-vswitch-test'", False),
    "unknown-group": ("ports: {vm1: {type: vhost-user, socket_group: no-such-group-vswitch-test}}\n",
                      "ports.vm1.socket_group: unknown group 'no-such-group-vswitch-test'", False),
    "unknown-control-group": ("control: {group: no-such-group-vswitch-test}\nports: {}\n",
                              "control.group: unknown group", False),
    "unknown-default-group": ("defaults: {socket_group: no-such-group-vswitch-test}\nports: {}\n",
                              "defaults.socket_group: unknown group", False),
    "duplicate-socket": ("ports:\n  a: {type: vhost-user, socket: /run/x.sock}\n  b: {type: vhost-user, socket: /run/x.sock}\n",
                         "socket path '/run/x.sock' is also used by port 'b'", False),
    "duplicate-default-socket": ("ports:\n  a: {type: vhost-user}\n  b: {type: vhost-user, socket: /run/vswitch/a.sock}\n",
                                 "default socket path '/run/vswitch/a.sock' is also used by port 'b'", False),
    "duplicate-mac": ("ports:\n  a: {type: vhost-user, mac: '52:54:00:00:00:01'}\n"
                      "  b: {type: tap, mac: '52:54:00:00:00:01'}\n",
                      "MAC address '52:54:00:00:00:01' is also used by port 'b'", False),
    "duplicate-mac-case": ("ports:\n  a: {type: vhost-user, mac: '52:54:00:00:00:AA'}\n"
                           "  b: {type: vhost-user, mac: '52:54:00:00:00:aa'}\n",
                           "MAC address '52:54:00:00:00:aa' is also used by port 'b'", False),
    "duplicate-ifname": ("ports:\n  a: {type: tap, ifname: vs0}\n  b: {type: tap, ifname: vs0}\n",
                         "interface name 'vs0' is also used by port 'b'", False),
    "client-via-defaults": ("defaults: {mode: client}\nports: {vm1: {type: vhost-user, socket_group: 0}}\n",
                            "ports.vm1.socket_group: only for server-mode ports", False),
    "tap-default-ifname-long": ("ports: {abcdefghijklmnop: {type: tap}}\n",
                                "ports.abcdefghijklmnop.ifname: not a valid interface name", False),
    "ifname-bytes": ("ports: {up: {type: tap, ifname: \"\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\"}}\n",
                     "16 bytes", False),
    "socket-bytes": ("ports: {vm1: {type: vhost-user, socket: /%s.sock}}\n" % ("\u00e9" * 51),
                     "too long for AF_UNIX: 108 bytes", False),
    "default-socket-too-long": ("runtime_dir: /%s\nports: {vm1: {type: vhost-user}}\n" % ("d" * 99),
                                "default socket path too long for AF_UNIX", False),
    "metrics-bad-ipv6": ("metrics: {listen: '[1::2::3]:9479'}\nports: {}\n",
                         "host must be an IPv4 or IPv6 address", False),
    "queues-float": ("ports: {vm1: {type: vhost-user, queues: 2.0}}\n", "must be an integer 1..64 (got float 2.0)", False),
    "runtime-dir-not-a-directory": ("runtime_dir: /etc/hostname/vswitch\nports: {}\n",
                                    "runtime_dir: cannot create /etc/hostname/vswitch: /etc/hostname is not a directory",
                                    True),
    "socket-dir-not-a-directory": ("ports: {vm1: {type: vhost-user, socket: /etc/hostname/vm1.sock}}\n",
                                   "ports.vm1.socket: cannot create /etc/hostname/vm1.sock: "
                                   "/etc/hostname is not a directory", True),
    "cpu-unavailable": ("datapath: {cpus: [4095]}\nports: {}\n",
                        "datapath.cpus[0]: cpu 4095 is not available to this process (allowed: ", True),
}

# FDB: the `fdb` section and the per-port cap.
GOOD["fdb"] = """
    fdb:
      aging_time: 0
      max_entries_per_port: 0
      static:
        - {mac: "52:54:00:00:00:10", port: vm1, vlan: 10}
        - {mac: "52:54:00:00:00:10", port: up}
    ports:
      vm1: {type: vhost-user, mac: "52:54:00:00:00:01", fdb_max_entries: 256}
      up: {type: tap, fdb_max_entries: 0}
    """
BAD.update({
    "fdb-unknown-key": ("fdb: {aging: 10}\nports: {}\n", "fdb.aging: unknown key 'aging', did you mean 'aging_time'?"),
    "fdb-aging-negative": ("fdb: {aging_time: -1}\nports: {}\n", "fdb.aging_time: must be 0..1000000 (got -1)"),
    "fdb-cap-string": ("fdb: {max_entries_per_port: many}\nports: {}\n", "fdb.max_entries_per_port: must be an integer"),
    "fdb-static-mapping": ("fdb: {static: {mac: '02:00:00:00:00:01'}}\nports: {}\n", "fdb.static: must be a list"),
    "fdb-static-no-port": ("fdb: {static: [{mac: '02:00:00:00:00:01'}]}\nports: {}\n",
                           "fdb.static[0]: missing required key 'port'"),
    "fdb-static-multicast": ("fdb: {static: [{mac: '01:00:5e:00:00:01', port: a}]}\nports: {a: {type: tap}}\n",
                             "fdb.static[0].mac: must be a unicast MAC"),
    "fdb-static-vlan-4095": ("fdb: {static: [{mac: '02:00:00:00:00:01', port: a, vlan: 4095}]}\nports: {a: {type: tap}}\n",
                             "fdb.static[0].vlan: must be 0..4094 (got 4095)"),
    "fdb-port-cap-negative": ("ports: {a: {type: vhost-user, fdb_max_entries: -1}}\n",
                              "ports.a.fdb_max_entries: must be 0..1000000 (got -1)"),
    "fdb-tap-cap-bool": ("ports: {a: {type: tap, fdb_max_entries: true}}\n",
                         "ports.a.fdb_max_entries: must be an integer"),
})
VALIDATOR_ONLY.update({
    "fdb-static-no-such-port": ("fdb: {static: [{mac: '02:00:00:00:00:01', port: vm2}]}\nports: {vm1: {type: tap}}\n",
                                "fdb.static[0].port: no port named 'vm2', did you mean 'vm1'? (ports: vm1)", False),
    "fdb-static-twice": ("fdb:\n  static:\n  - {mac: '02:00:00:00:00:01', port: a, vlan: 5}\n"
                         "  - {mac: '02:00:00:00:00:01', port: b, vlan: 5}\nports: {a: {type: tap}, b: {type: tap}}\n",
                         "fdb.static[1]: 02:00:00:00:00:01 in VLAN 5 is already pinned by fdb.static[0]", False),
    "fdb-static-port-mac": ("fdb: {static: [{mac: '02:00:00:00:00:01', port: b}]}\n"
                            "ports: {a: {type: tap, mac: '02:00:00:00:00:01'}, b: {type: tap}}\n",
                            "fdb.static[0]: 02:00:00:00:00:01 in VLAN 0 is already pinned by port 'a' (its mac)", False),
})

# Documents the two judge differently on purpose, with the reason.
DIVERGENT = {
    # YAML 1.1 reads an unquoted 52:54:00:12:34:56 as a base-60 integer; the
    # validator takes the text as written, the schema sees the integer (and
    # editors using YAML 1.2 see a string).  The docs say to quote MACs.
    "unquoted-mac": "ports: {vm1: {type: vhost-user, mac: 52:54:00:12:34:56}}\n",
}


# -- forwarding policies (docs/tenants.md): vlan, allowed_macs, storm_control,
# ingress_policing, egress_policing, mirror; on every port type.

def _port(settings: str, port_type: str = "vhost-user", others: str = "") -> str:
    return f"ports:\n  p: {{type: {port_type}, {settings}}}\n{others}"


POLICY_GOOD = {
    "policies-every-key": """
        ports:
          vm1:
            type: vhost-user
            mac: "52:54:00:00:00:01"
            vlan: {mode: access, id: 10}
            allowed_macs: ["52:54:00:00:00:AA", "02:00:00:00:00:02"]
            storm_control: {broadcast: 1000, multicast: 2000, unknown_unicast: 3000}
            ingress_policing: {rate: "100Mbit", burst: "64KiB", pps: 20000, pps_burst: 64}
            egress_policing: {rate: 1G}
            mirror: {to: up, direction: egress}
          vm2:
            type: vhost-user
            vlan: {mode: trunk, allowed: [1, "20-30", "25-4094", "7"], native: 1}
            mirror: {to: vm1}
          up:
            type: tap
            vlan: {mode: trunk, native: 4094}
            allowed_macs: ["02:00:00:00:00:02"]
            storm_control: {unknown_unicast: 1}
            ingress_policing: {pps: 1000000000, pps_burst: 1000000000}
            egress_policing: {rate: 400000000000, burst: 1073741824}
        """,
    "vlan-trunk-empty-allowed-with-native": _port("vlan: {mode: trunk, allowed: [], native: 3}", "tap"),
    "rate-and-burst-forms": """
        ports:
          a: {type: tap, ingress_policing: {rate: "1000", burst: "1514"}}
          b: {type: tap, ingress_policing: {rate: 2.5Gbit, burst: 1.5 MiB}}
          c: {type: tap, ingress_policing: {rate: 100 mbit, burst: 2MB}}
          d: {type: tap, ingress_policing: {rate: 1.5kbit/s, burst: 1514B}}
          e: {type: tap, ingress_policing: {rate: 400G, burst: 1GiB}}
          f: {type: tap, ingress_policing: {rate: 10M, burst: 64kB}, mtu: 9000}
        """,
}

POLICY_BAD = {
    "vlan-not-mapping": (_port("vlan: 10"), "ports.p.vlan: must be a mapping"),
    "vlan-no-mode": (_port("vlan: {id: 10}"), "ports.p.vlan: missing required key 'mode'"),
    "vlan-mode": (_port("vlan: {mode: hybrid, id: 10}"), "ports.p.vlan.mode: must be one of: access, trunk"),
    "vlan-unknown-key": (_port("vlan: {mode: access, id: 10, tag: 10}"), "ports.p.vlan.tag: unknown key"),
    "vlan-access-no-id": (_port("vlan: {mode: access}"), "ports.p.vlan: an access port needs 'id'"),
    "vlan-access-allowed": (_port("vlan: {mode: access, id: 3, allowed: [4]}"),
                            "ports.p.vlan.allowed: only for trunk ports"),
    "vlan-access-native": (_port("vlan: {mode: access, id: 3, native: 4}"),
                           "ports.p.vlan.native: only for trunk ports"),
    "vlan-id-0": (_port("vlan: {mode: access, id: 0}"), "must be 1..4094 (802.1Q reserves 0 and 4095) (got 0)"),
    "vlan-id-4095": (_port("vlan: {mode: access, id: 4095}"), "ports.p.vlan.id: must be 1..4094"),
    "vlan-id-string": (_port("vlan: {mode: access, id: '10'}"), "ports.p.vlan.id: must be a VLAN id"),
    "vlan-trunk-nothing": (_port("vlan: {mode: trunk}", "tap"), "a trunk port needs 'allowed'"),
    "vlan-trunk-empty": (_port("vlan: {mode: trunk, allowed: []}"), "a trunk port needs 'allowed'"),
    "vlan-trunk-id": (_port("vlan: {mode: trunk, id: 3, native: 3}"), "ports.p.vlan.id: only for access ports"),
    "vlan-trunk-native-0": (_port("vlan: {mode: trunk, native: 0}"), "ports.p.vlan.native: must be 1..4094"),
    "vlan-allowed-not-list": (_port("vlan: {mode: trunk, allowed: '10-20'}"), "must be a list of VLAN ids"),
    "vlan-allowed-4095": (_port("vlan: {mode: trunk, allowed: [4095]}"), "ports.p.vlan.allowed[0]: must be 1..4094"),
    "vlan-allowed-range-0": (_port("vlan: {mode: trunk, allowed: ['0-10']}"), "VLAN ids must be 1..4094"),
    "vlan-allowed-range-big": (_port("vlan: {mode: trunk, allowed: ['10-5000']}"), "VLAN ids must be 1..4094"),
    "vlan-allowed-word": (_port("vlan: {mode: trunk, allowed: [all]}"), "or a range such as '20-30'"),
    "vlan-allowed-spaces": (_port("vlan: {mode: trunk, allowed: ['10 - 20']}"), "or a range such as '20-30'"),
    "vlan-allowed-float": (_port("vlan: {mode: trunk, allowed: [1.5]}"), "(got float 1.5)"),
    "allowed-macs-string": (_port("allowed_macs: '52:54:00:00:00:01'"), "ports.p.allowed_macs: must be a list"),
    "allowed-macs-empty": (_port("allowed_macs: []"), "ports.p.allowed_macs: must not be empty"),
    "allowed-macs-multicast": (_port("allowed_macs: ['01:00:5e:00:00:01']", "tap"),
                               "ports.p.allowed_macs[0]: must be a unicast MAC"),
    "allowed-macs-zero": (_port("allowed_macs: ['00:00:00:00:00:00']"), "must not be the all-zero MAC"),
    "allowed-macs-twice": (_port("allowed_macs: ['52:54:00:00:00:01', '52:54:00:00:00:01']"),
                           "ports.p.allowed_macs[1]: '52:54:00:00:00:01' is listed twice"),
    "storm-empty": (_port("storm_control: {}"), "ports.p.storm_control: must set at least one of"),
    "storm-zero": (_port("storm_control: {broadcast: 0}"), "ports.p.storm_control.broadcast: must be 1..100000000"),
    "storm-too-big": (_port("storm_control: {multicast: 100000001}", "tap"), "must be 1..100000000"),
    "storm-unknown-key": (_port("storm_control: {unicast: 5}"), "ports.p.storm_control.unicast: unknown key"),
    "storm-string": (_port("storm_control: {broadcast: '1k'}"), "must be an integer 1..100000000"),
    "policer-empty": (_port("ingress_policing: {}"), "needs 'rate' (bits/s) or 'pps' (frames/s)"),
    "policer-burst-only": (_port("egress_policing: {burst: 64KiB}"), "egress_policing.burst: only with 'rate'"),
    "policer-pps-burst-without-pps": (_port("ingress_policing: {rate: 1G, pps_burst: 64}"),
                                      "ingress_policing.pps_burst: only with 'pps'"),
    "policer-unknown-key": (_port("ingress_policing: {rate: 1G, ceil: 2G}", "tap"), "ingress_policing.ceil: unknown key"),
    "rate-999": (_port("ingress_policing: {rate: 999}"), "must be 1kbit..400Gbit"),
    "rate-too-big": (_port("ingress_policing: {rate: 400000000001}"), "must be 1kbit..400Gbit"),
    "rate-bytes": (_port("ingress_policing: {rate: 10MBps}"), "rates are in bits per second"),
    "rate-unit": (_port("ingress_policing: {rate: 10Tbit}"), "unknown unit 'Tbit'"),
    "rate-float": (_port("ingress_policing: {rate: 1500.5}"), "must be an integer (bits/s)"),
    "rate-negative": (_port("ingress_policing: {rate: -1000}"), "must be 1kbit..400Gbit"),
    "burst-1513": (_port("ingress_policing: {rate: 1G, burst: 1513}"), "must be at least 1514 bytes"),
    "burst-too-big": (_port("ingress_policing: {rate: 1G, burst: 1073741825}"), "must be at most 1GiB"),
    "burst-unit": (_port("ingress_policing: {rate: 1G, burst: 64KB}"), "unknown unit 'KB'"),
    "pps-0": (_port("ingress_policing: {pps: 0}"), "ingress_policing.pps: must be 1..1000000000"),
    "pps-burst-0": (_port("ingress_policing: {pps: 10, pps_burst: 0}"), "pps_burst: must be 1..1000000000"),
    "mirror-not-mapping": (_port("mirror: q", others="  q: {type: tap}\n"), "ports.p.mirror: must be a mapping"),
    "mirror-no-to": (_port("mirror: {direction: both}"), "ports.p.mirror: missing required key 'to'"),
    "mirror-direction": (_port("mirror: {to: q, direction: rx}", others="  q: {type: tap}\n"),
                         "ports.p.mirror.direction: must be one of: ingress, egress, both"),
    "mirror-unknown-key": (_port("mirror: {to: q, truncate: 64}", others="  q: {type: tap}\n"),
                           "ports.p.mirror.truncate: unknown key"),
    "mirror-to-int": (_port("mirror: {to: 5}", others="  '5': {type: tap}\n"), "ports.p.mirror.to: must be a string"),
}

POLICY_VALIDATOR_ONLY = {
    "vlan-range-reversed": (_port("vlan: {mode: trunk, allowed: ['30-20']}"),
                            "ports.p.vlan.allowed[0]: range is reversed", False),
    "allowed-macs-twice-in-other-case": (_port("allowed_macs: ['52:54:00:00:00:AA', '52:54:00:00:00:aa']"),
                                         "'52:54:00:00:00:aa' is listed twice", False),
    "allowed-macs-another-ports-mac": (_port("allowed_macs: ['52:54:00:00:00:01']",
                                             others="  q: {type: tap, mac: '52:54:00:00:00:01'}\n"),
                                       "ports.p.allowed_macs[0]: '52:54:00:00:00:01' is the mac of port 'q'",
                                       False),
    "rate-string-too-low": (_port("ingress_policing: {rate: 500bit}"), "(got '500bit' = 500 bit/s)", False),
    "rate-string-too-high": (_port("egress_policing: {rate: 401G}"), "(got '401G' = 401000000000 bit/s)",
                             False),
    "burst-string-too-small": (_port("ingress_policing: {rate: 1G, burst: 1KiB}"),
                               "must be at least 1514 bytes so that a full 1514-byte frame fits", False),
    "burst-string-too-big": (_port("ingress_policing: {rate: 1G, burst: 2GiB}"), "must be at most 1GiB", False),
    "burst-below-jumbo-frame": (_port("mtu: 9000, ingress_policing: {rate: 1G, burst: 9000}"),
                                "must be at least 9014 bytes so that a full frame of the port's mtu 9000", False),
    "mirror-to-missing-port": (_port("mirror: {to: sniffer}", others="  sniffer0: {type: tap}\n"),
                               "ports.p.mirror.to: no port named 'sniffer', did you mean 'sniffer0'?", False),
    # JSON Schema's "integer" includes 1.0e+9; YAML says it is a float.
    "rate-integral-float": (_port("ingress_policing: {rate: 1.0e+9}"), "(got float 1.0e+9)", False),
    "mirror-to-itself": (_port("mirror: {to: p}"), "ports.p.mirror.to: a port cannot mirror to itself", False),
    "mirror-loop": (_port("mirror: {to: q, direction: ingress}", others="  q: {type: tap, mirror: {to: p}}\n"),
                    "ports.p.mirror.to: mirror loop: port 'q' mirrors back to 'p' (p -> q -> p)", False),
}

# What a front-end can make the daemon hold: the `limits` section, and the
# per-port (and default) allow_file_memory.
GOOD["allow-file-memory"] = """
    defaults: {allow_file_memory: true}
    ports:
      vm1: {type: vhost-user, allow_file_memory: false}
      vm2: {type: vhost-user}
    """
GOOD["limits"] = """
    limits:
      message_timeout: 0.5
      guest_memory_per_port: 256GiB
      guest_memory_total: 2199023255552
    defaults: {allow_file_memory: true}
    ports:
      vm1: {type: vhost-user, allow_file_memory: false}
      vm2: {type: vhost-user}
    """
GOOD["limits-forms"] = """
    limits: {message_timeout: 3600, guest_memory_per_port: 1.5 GiB, guest_memory_total: 128TiB}
    ports: {}
    """
BAD.update({
    "limits-not-mapping": ("limits: 10\nports: {}\n", "limits: must be a mapping"),
    "limits-unknown-key": ("limits: {timeout: 10}\nports: {}\n", "limits.timeout: unknown key"),
    "message-timeout-0": ("limits: {message_timeout: 0}\nports: {}\n",
                          "limits.message_timeout: must be 0.1..3600 seconds (got 0)"),
    "message-timeout-big": ("limits: {message_timeout: 3601}\nports: {}\n", "must be 0.1..3600 seconds"),
    "message-timeout-string": ("limits: {message_timeout: 10s}\nports: {}\n",
                               "limits.message_timeout: must be a number of seconds"),
    "message-timeout-bool": ("limits: {message_timeout: true}\nports: {}\n", "must be a number of seconds"),
    "guest-memory-small": ("limits: {guest_memory_per_port: 4096}\nports: {}\n",
                           "limits.guest_memory_per_port: must be 1MiB..128TiB"),
    "guest-memory-unit": ("limits: {guest_memory_total: 4TB}\nports: {}\n",
                          "limits.guest_memory_total: unknown unit 'TB'"),
    "guest-memory-negative": ("limits: {guest_memory_total: -1}\nports: {}\n", "must be 1MiB..128TiB"),
    "allow-file-memory-string": ("ports: {vm1: {type: vhost-user, allow_file_memory: 'yes'}}\n",
                                 "ports.vm1.allow_file_memory: must be true or false"),
    "allow-file-memory-default": ("defaults: {allow_file_memory: 1}\nports: {}\n",
                                  "defaults.allow_file_memory: must be true or false"),
    "allow-file-memory-tap": ("ports: {up: {type: tap, allow_file_memory: true}}\n",
                              "ports.up.allow_file_memory: unknown key"),
})
VALIDATOR_ONLY.update({
    "guest-memory-string-too-big": ("limits: {guest_memory_total: 129TiB}\nports: {}\n",
                                    "limits.guest_memory_total: must be 1MiB..128TiB", False),
    "guest-memory-total-below-per-port": (
        "limits: {guest_memory_per_port: 2TiB, guest_memory_total: 1TiB}\nports: {}\n",
        "limits.guest_memory_total: must be at least limits.guest_memory_per_port", False),
    "guest-memory-per-port-above-default-total": (
        "limits: {guest_memory_per_port: 64TiB}\nports: {}\n",
        "limits.guest_memory_per_port: must not be more than limits.guest_memory_total", False),
})

GOOD.update(POLICY_GOOD)
BAD.update(POLICY_BAD)
VALIDATOR_ONLY.update(POLICY_VALIDATOR_ONLY)


def _docs_examples() -> dict[str, str]:
    """The full configuration files shown in docs/configuration.md."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M)
    return {f"docs-{i}": block for i, block in enumerate(blocks)}


def _good_examples() -> dict[str, str]:
    examples = {name: doc(text) for name, text in GOOD.items()}
    examples["shipped-vswitch.yaml"] = (ROOT / "config" / "vswitch.yaml").read_text(encoding="utf-8")
    examples.update(_docs_examples())
    return examples


# --------------------------------------------------------------------------
# Tests


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_enough_examples() -> None:
    assert len(BAD) >= 25
    assert len(_docs_examples()) >= 2


@pytest.mark.parametrize("name, text", sorted(_good_examples().items()))
def test_both_accept(name: str, text: str) -> None:
    assert schema_errors(text) == []
    assert validator_errors(text) == []


@pytest.mark.parametrize("name", sorted(BAD))
def test_both_reject(name: str) -> None:
    text, message = BAD[name]
    assert schema_errors(text) != [], "schema accepts it"
    found = validator_errors(text)
    assert any(message in issue for issue in found), found


@pytest.mark.parametrize("name", sorted(VALIDATOR_ONLY))
def test_schema_accepts_validator_rejects(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text, message, check_host = VALIDATOR_ONLY[name]
    assert schema_errors(text) == []
    found = validator_errors(text, check_host=check_host)
    assert any(message in issue for issue in found), found
    if check_host:
        assert validator_errors(text, check_host=False) == []


@pytest.mark.parametrize("name", sorted(DIVERGENT))
def test_known_divergence(name: str) -> None:
    text = DIVERGENT[name]
    assert schema_errors(text) != []
    assert validator_errors(text) == []


def test_unwritable_socket_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Root can write anywhere: pretend tmp_path is read-only.
    real_access = os.access
    monkeypatch.setattr(os, "access",
                        lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    text = f"ports: {{vm1: {{type: vhost-user, socket: {tmp_path}/a/b/vm1.sock}}}}\n"
    assert schema_errors(text) == []
    [found] = validator_errors(text, check_host=True)
    assert found == (f"c.yaml:1:41: ports.vm1.socket: cannot create {tmp_path}/a/b/vm1.sock: "
                     f"{tmp_path} is not writable by this process (uid {os.geteuid()})")


def test_schema_and_validator_know_the_same_keys() -> None:
    props = SCHEMA["properties"]
    assert set(props) == set(validate._TOP_KEYS)
    assert set(props["control"]["properties"]) == set(validate._CONTROL_KEYS)
    assert set(props["metrics"]["properties"]) == set(validate._METRICS_KEYS)
    assert set(props["datapath"]["properties"]) == set(validate._DATAPATH_KEYS)
    assert set(props["defaults"]["properties"]) == set(validate._DEFAULTS_KEYS)
    assert set(props["fdb"]["properties"]) == set(validate._FDB_KEYS)
    assert set(props["limits"]["properties"]) == set(validate._LIMITS_KEYS)
    assert set(props["fdb"]["properties"]["static"]["items"]["properties"]) == set(validate._FDB_STATIC_KEYS)
    defs = SCHEMA["$defs"]
    assert set(defs["vhostUserPort"]["properties"]) == set(validate._VHOST_USER_KEYS)
    assert set(defs["tapPort"]["properties"]) == set(validate._TAP_KEYS)
    assert defs["port"]["properties"]["type"]["enum"] == list(cfg.PORT_TYPES)
    assert defs["portSettings"]["mode"]["enum"] == list(cfg.PORT_MODES)
    assert props["datapath"]["properties"]["mode"]["enum"] == list(cfg.DATAPATH_MODES)


def test_every_schema_property_has_a_description() -> None:
    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if name != "type" or "description" not in node:
                    if "$ref" not in sub and "const" not in sub:
                        assert "description" in sub, f"{where}.{name}"
                walk(sub, f"{where}.{name}")
            for key in ("$defs", "portSettings"):
                for name, sub in node.get(key, {}).items():
                    walk(sub, f"{where}.{name}")
    walk(SCHEMA, "")
    for name, sub in SCHEMA["$defs"]["portSettings"].items():
        assert "description" in sub, name


def test_schema_knows_the_policy_keys() -> None:
    defs = SCHEMA["$defs"]
    for port in ("vhostUserPort", "tapPort"):
        assert set(cfg.POLICY_KEYS) <= set(defs[port]["properties"])
    assert set(defs["vlan"]["properties"]) == set(validate._VLAN_KEYS)
    assert set(defs["stormControl"]["properties"]) == set(validate._STORM_CONTROL_KEYS)
    assert set(defs["policer"]["properties"]) == set(validate._POLICER_KEYS)
    assert set(defs["mirror"]["properties"]) == set(validate._MIRROR_KEYS)
    assert defs["vlan"]["properties"]["mode"]["enum"] == list(cfg.VLAN_MODES)
    assert defs["mirror"]["properties"]["direction"]["enum"] == list(cfg.MIRROR_DIRECTIONS)
    assert (defs["vlanId"]["minimum"], defs["vlanId"]["maximum"]) == (bounds.MIN_VLAN, bounds.MAX_VLAN)
