"""Configuration loading and validation.

The configuration is a single YAML document::

    version: 1                 # optional, default 1; only 1 is accepted
    runtime_dir: /run/vswitch  # optional, default /run/vswitch; absolute path
    ports:                     # required (may be {}); mapping name -> port
      vm1:
        type: vhost-user       # required; supported: vhost-user
        mode: server           # server (default) | client
        socket: /run/vswitch/vm1.sock  # optional, default {runtime_dir}/{name}.sock
        queues: 2              # queue pairs offered, 1..64, default 1
    datapath:                  # optional
      workers: 1               # 1..64, default 1
      mode: adaptive           # poll | event | adaptive (default)

The file is composed into a YAML node tree (not loaded into Python objects
directly) so that every problem can be reported with the line and column of
the offending node, so that duplicate keys can be detected (PyYAML silently
keeps the last one), and so that all problems are reported at once.  Scalars
are converted with PyYAML's SafeConstructor, so ``2`` is an int, ``"2"`` is a
string and ``true`` is a bool; only real ints are accepted where an integer is
expected.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "Config",
    "ConfigError",
    "ConfigIssue",
    "DatapathConfig",
    "VhostUserPortConfig",
    "TapPortConfig",
    "load_config",
    "parse_config",
]

SUPPORTED_VERSIONS = (1,)
DEFAULT_VERSION = 1
DEFAULT_RUNTIME_DIR = "/run/vswitch"
PORT_TYPES = ("vhost-user", "tap")
PORT_MODES = ("server", "client")
DEFAULT_PORT_MODE = "server"
MIN_QUEUES, MAX_QUEUES, DEFAULT_QUEUES = 1, 64, 1
MIN_WORKERS, MAX_WORKERS, DEFAULT_WORKERS = 1, 64, 1
# poll: workers spin (lowest latency, a full core each); event: workers sleep
# on the guests' kick eventfds whenever a round finds nothing; adaptive: spin
# while busy, sleep after a short idle spell.
DATAPATH_MODES = ("poll", "event", "adaptive")
DEFAULT_DATAPATH_MODE = "adaptive"
# sizeof(sockaddr_un.sun_path) is 108 on Linux; one byte goes to the NUL.
UNIX_PATH_MAX = 107
PORT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")

_TOP_KEYS = ("version", "runtime_dir", "ports", "datapath")
_VHOST_USER_KEYS = ("type", "mode", "socket", "queues")
_TAP_KEYS = ("type", "ifname", "queues", "mtu", "create")
MIN_MTU, MAX_MTU = 68, 65535
IFNAMSIZ = 16   # kernel interface names: at most 15 bytes
_DATAPATH_KEYS = ("workers", "mode")

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


# --------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class VhostUserPortConfig:
    name: str
    mode: str
    socket: str
    queues: int
    type: str = "vhost-user"

    def to_dict(self) -> dict[str, Any]:
        """The port as it would be written in the file (without the name)."""
        return {
            "type": self.type,
            "mode": self.mode,
            "socket": self.socket,
            "queues": self.queues,
        }


@dataclass(frozen=True)
class TapPortConfig:
    """The uplink to the host kernel: a multiqueue TAP device."""

    name: str
    ifname: str
    queues: int
    mtu: int | None = None      # None: keep the device's MTU
    create: bool = True         # False: attach to an existing persistent TAP only
    type: str = "tap"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "ifname": self.ifname, "queues": self.queues,
                               "create": self.create}
        if self.mtu is not None:
            out["mtu"] = self.mtu
        return out


@dataclass(frozen=True)
class DatapathConfig:
    workers: int = DEFAULT_WORKERS
    mode: str = DEFAULT_DATAPATH_MODE

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "mode": self.mode}


@dataclass(frozen=True)
class Config:
    version: int
    runtime_dir: str
    ports: dict[str, VhostUserPortConfig]  # in file order
    datapath: DatapathConfig
    path: str | None = None  # file it was loaded from; None for parse_config()

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration (all defaults filled in) as plain
        dicts/strs/ints; ``parse_config(yaml.safe_dump(c.to_dict()))`` gives
        back an equal Config (apart from ``path``)."""
        return {
            "version": self.version,
            "runtime_dir": self.runtime_dir,
            "ports": {name: port.to_dict() for name, port in self.ports.items()},
            "datapath": self.datapath.to_dict(),
        }


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file.

    ``line`` and ``col`` are 1-based; both are 0 when there is no position
    (e.g. the file could not be read).  ``key`` is the dotted path of the
    offending setting (``ports.vm1.queues``), "" for the document itself.
    """

    file: str
    line: int
    col: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line > 0 else self.file
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        self.errors: list[ConfigIssue] = list(errors)
        super().__init__("\n".join(str(issue) for issue in self.errors))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.errors)


# --------------------------------------------------------------------------
# Entry points


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a configuration file (UTF-8 YAML).

    Raises ConfigError for every failure, including an unreadable file.
    """
    filename = os.fsdecode(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigIssue(filename, 0, 0, "", f"cannot read configuration file: {reason}")]
        ) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start]
        raise ConfigError(
            [ConfigIssue(filename, line, col, "", f"file is not valid UTF-8 (byte 0x{bad:02x})")]
        ) from exc
    return _parse(text.removeprefix("\ufeff"), filename, path=filename)


def parse_config(text: str, filename: str = "<string>") -> Config:
    """Parse and validate configuration text; ``filename`` is only used in
    error messages (the resulting Config has ``path=None``)."""
    return _parse(text, filename, path=None)


def _parse(text: str, filename: str, path: str | None) -> Config:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error_issue(exc, text, filename)]) from None
    except RecursionError:
        raise ConfigError(
            [ConfigIssue(filename, 0, 0, "", "invalid YAML: nesting too deep")]
        ) from None
    validator = _Validator(filename)
    config = validator.document(root, path)
    if validator.issues or config is None:
        issues = sorted(validator.issues, key=lambda i: (i.line, i.col))
        raise ConfigError(issues)
    return config


def _yaml_error_issue(exc: yaml.YAMLError, text: str, filename: str) -> ConfigIssue:
    """Turn a PyYAML syntax error into a positioned issue."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        parts = []
        if exc.context:
            context = exc.context
            cm = exc.context_mark
            if cm is not None and (mark is None or (cm.line, cm.column) != (mark.line, mark.column)):
                context += f" (line {cm.line + 1}, column {cm.column + 1})"
            parts.append(context)
        if exc.problem:
            parts.append(exc.problem)
        message = "invalid YAML: " + (", ".join(parts) or "syntax error")
        if mark is None:
            return ConfigIssue(filename, 0, 0, "", message)
        return ConfigIssue(filename, mark.line + 1, mark.column + 1, "", message)
    if isinstance(exc, yaml.reader.ReaderError):
        # For str input, position is an index into the text.
        pos = exc.position
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return ConfigIssue(
            filename, line, col, "",
            f"invalid YAML: unacceptable character U+{char:04X}: {exc.reason}",
        )
    return ConfigIssue(filename, 0, 0, "", f"invalid YAML: {exc}")


# --------------------------------------------------------------------------
# Validation


# Returned by _Validator.construct() when a scalar could not be converted
# (the problem has already been reported).
_BAD = object()

# Mapping entries: key text -> (key node, value node), in file order.
_Entries = dict[str, tuple[ScalarNode, Node]]


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _describe(node: Node, value: Any) -> str:
    """Short description of a value for "(got ...)" in messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {node.value}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {node.value}"
    if isinstance(value, str):
        return f"string {value!r}"
    return f"{type(value).__name__} {node.value!r}"


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


@dataclass
class _SocketUse:
    port: str
    path: str
    node: Node  # where to report problems with it
    key: str
    derived: bool  # True if built from runtime_dir and the port name


class _Validator:
    """Walks the composed node tree, collecting every problem found."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.issues: list[ConfigIssue] = []
        self._constructor = SafeConstructor()

    # -- reporting and generic checks ------------------------------------

    def error(self, node: Node, key: str, message: str) -> None:
        mark = node.start_mark
        self.issues.append(
            ConfigIssue(self.filename, mark.line + 1, mark.column + 1, key, message)
        )

    def construct(self, node: Node, key: str) -> Any:
        """Python value of a scalar node; the node itself for collections
        (which then fail every type check); _BAD if conversion failed."""
        if not isinstance(node, ScalarNode):
            return node
        try:
            return self._constructor.construct_object(node)
        except Exception as exc:  # explicit tags can fail in many ways
            self.error(node, key, f"invalid value {node.value!r} for tag {node.tag}: {exc}")
            return _BAD

    def describe(self, node: Node) -> str:
        """Like _describe(), converting the node without reporting errors."""
        try:
            value = self._constructor.construct_object(node) if isinstance(node, ScalarNode) else node
        except Exception:
            return repr(node.value)
        return _describe(node, value)

    def mapping(self, node: Node, key: str) -> _Entries | None:
        """Entries of a mapping node, reporting duplicate and non-scalar
        keys (the first occurrence of a duplicated key wins)."""
        if not isinstance(node, MappingNode):
            self.error(node, key, f"must be a mapping (got {self.describe(node)})")
            return None
        entries: _Entries = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, key, f"keys must be scalars (got {_describe(key_node, None)})")
                continue
            if key_node.tag == _MERGE_TAG:
                self.error(key_node, key, "merge keys ('<<') are not supported")
                continue
            name = key_node.value
            if name in entries:
                first = entries[name][0].start_mark
                self.error(
                    key_node, _join(key, name),
                    f"duplicate key {name!r} (first defined at line {first.line + 1}, "
                    f"column {first.column + 1})",
                )
                continue
            entries[name] = (key_node, value_node)
        return entries

    def check_keys(
        self,
        entries: _Entries,
        allowed: tuple[str, ...],
        key: str,
        node: Node,
        required: tuple[str, ...] = (),
    ) -> None:
        expected = ", ".join(sorted(allowed))
        for name, (key_node, _) in entries.items():
            if name not in allowed:
                self.error(
                    key_node, _join(key, name),
                    f"unknown key {name!r} (expected one of: {expected})",
                )
        for name in required:
            if name not in entries:
                self.error(node, key, f"missing required key {name!r}")

    def integer(self, node: Node, key: str, lo: int, hi: int) -> int | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(node, key, f"must be an integer {lo}..{hi} (got {_describe(node, value)})")
            return None
        if not lo <= value <= hi:
            self.error(node, key, f"must be {lo}..{hi} (got {value})")
            return None
        return value

    def string(self, node: Node, key: str) -> str | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if not isinstance(value, str):
            self.error(node, key, f"must be a string (got {_describe(node, value)})")
            return None
        return value

    def choice(self, node: Node, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.construct(node, key)
        if value is _BAD:
            return None
        if isinstance(value, str) and value in choices:
            return value
        got = repr(value) if isinstance(value, str) else _describe(node, value)
        self.error(node, key, f"must be one of: {', '.join(choices)} (got {got})")
        return None

    def absolute_path(self, node: Node, key: str) -> str | None:
        path = self.string(node, key)
        if path is None:
            return None
        if not path:
            self.error(node, key, "must be an absolute path (got an empty string)")
            return None
        if "\0" in path:
            self.error(node, key, f"must not contain NUL characters (got {path!r})")
            return None
        if not posixpath.isabs(path):
            self.error(node, key, f"must be an absolute path (got {path!r})")
            return None
        return path

    # -- the schema --------------------------------------------------------

    def document(self, root: Node | None, path: str | None) -> Config | None:
        if root is None or _is_null(root):
            line, col = (root.start_mark.line + 1, root.start_mark.column + 1) if root else (1, 1)
            self.issues.append(ConfigIssue(
                self.filename, line, col, "",
                "configuration is empty (expected a mapping with at least a 'ports' key; "
                "use 'ports: {}' for a switch without ports)",
            ))
            return None
        if not isinstance(root, MappingNode):
            got = self.describe(root)
            self.error(root, "", f"top level must be a mapping of settings (got {got})")
            return None
        top = self.mapping(root, "")
        assert top is not None

        version: int | None = DEFAULT_VERSION
        if "version" in top:
            version_node = top["version"][1]
            value = self.construct(version_node, "version")
            if value is _BAD:
                version = None
            elif not isinstance(value, int) or isinstance(value, bool):
                self.error(version_node, "version",
                           f"must be an integer (got {_describe(version_node, value)})")
                version = None
            elif value not in SUPPORTED_VERSIONS:
                supported = ", ".join(map(str, SUPPORTED_VERSIONS))
                self.error(version_node, "version",
                           f"unsupported configuration version {value} (supported: {supported})")
                # The rest of the file follows a schema we do not know.
                return None
            else:
                version = value

        self.check_keys(top, _TOP_KEYS, "", root, required=("ports",))

        runtime_dir: str | None = DEFAULT_RUNTIME_DIR
        if "runtime_dir" in top:
            runtime_dir = self.absolute_path(top["runtime_dir"][1], "runtime_dir")

        ports: dict[str, VhostUserPortConfig] = {}
        if "ports" in top:
            ports = self.ports(top["ports"][1], runtime_dir)

        datapath: DatapathConfig | None = DatapathConfig()
        if "datapath" in top:
            datapath = self.datapath(top["datapath"][1])

        if self.issues or version is None or runtime_dir is None or datapath is None:
            return None
        return Config(version=version, runtime_dir=runtime_dir, ports=ports,
                      datapath=datapath, path=path)

    def ports(self, node: Node, runtime_dir: str | None) -> dict[str, VhostUserPortConfig]:
        if _is_null(node):
            self.error(node, "ports",
                       "must be a mapping of port name to port (got null); "
                       "use 'ports: {}' for a switch without ports")
            return {}
        entries = self.mapping(node, "ports")
        if entries is None:
            return {}
        ports: dict[str, VhostUserPortConfig] = {}
        sockets: list[_SocketUse] = []
        for name, (key_node, value_node) in entries.items():
            key = f"ports.{name}"
            name_ok = PORT_NAME_RE.fullmatch(name) is not None
            if not name_ok:
                self.error(
                    key_node, key,
                    f"invalid port name {name!r} (must be 1..32 characters from "
                    "A-Z a-z 0-9 _ . - and start with a letter or digit)",
                )
            port, socket_use = self.port(name, key_node, value_node, key, runtime_dir, name_ok)
            if socket_use is not None:
                sockets.append(socket_use)
            if port is not None and name_ok:
                ports[name] = port
        self.check_socket_conflicts(sockets)
        return ports

    def port(
        self,
        name: str,
        key_node: ScalarNode,
        node: Node,
        key: str,
        runtime_dir: str | None,
        name_ok: bool,
    ) -> tuple[VhostUserPortConfig | None, _SocketUse | None]:
        entries = self.mapping(node, key)
        if entries is None:
            return None, None

        ok = True
        if "type" in entries:
            type_node = entries["type"][1]
            value = self.construct(type_node, f"{key}.type")
            if value is _BAD:
                return None, None
            if not isinstance(value, str):
                self.error(type_node, f"{key}.type",
                           f"must be one of: {', '.join(PORT_TYPES)} (got {_describe(type_node, value)})")
                return None, None
            if value not in PORT_TYPES:
                # Other keys depend on the type: don't guess at them.
                self.error(type_node, f"{key}.type",
                           f"unsupported port type {value!r} (supported: {', '.join(PORT_TYPES)})")
                return None, None
        else:
            # vhost-user is the only type for now, so keep checking the
            # rest of the port against it to report everything at once.
            self.error(node, key,
                       f"missing required key 'type' (supported: {', '.join(PORT_TYPES)})")
            ok = False

        if entries.get("type") and self.construct(entries["type"][1], f"{key}.type") == "tap":
            return self.tap_port(name, entries, node, key), None

        self.check_keys(entries, _VHOST_USER_KEYS, key, node)

        mode: str | None = DEFAULT_PORT_MODE
        if "mode" in entries:
            mode = self.choice(entries["mode"][1], f"{key}.mode", PORT_MODES)

        queues: int | None = DEFAULT_QUEUES
        if "queues" in entries:
            queues = self.integer(entries["queues"][1], f"{key}.queues", MIN_QUEUES, MAX_QUEUES)

        socket: str | None = None
        socket_use: _SocketUse | None = None
        if "socket" in entries:
            socket_node = entries["socket"][1]
            socket = self.absolute_path(socket_node, f"{key}.socket")
            if socket is not None:
                socket_use = _SocketUse(name, socket, socket_node, f"{key}.socket", derived=False)
        elif runtime_dir is not None and name_ok:
            socket = posixpath.join(runtime_dir, f"{name}.sock")
            socket_use = _SocketUse(name, socket, key_node, f"{key}.socket", derived=True)

        if socket_use is not None:
            size = len(socket_use.path.encode("utf-8", "surrogatepass"))
            if size > UNIX_PATH_MAX:
                message = (
                    f"socket path too long for AF_UNIX: {size} bytes, at most "
                    f"{UNIX_PATH_MAX} allowed (got {socket_use.path!r})"
                )
                if socket_use.derived:
                    message = ("default " + message
                               + "; use a shorter runtime_dir or port name, or set 'socket'")
                self.error(socket_use.node, socket_use.key, message)
                socket = None

        if not ok or mode is None or queues is None or socket is None:
            return None, socket_use
        return VhostUserPortConfig(name=name, mode=mode, socket=socket, queues=queues), socket_use

    def tap_port(self, name: str, entries, node: Node, key: str) -> TapPortConfig | None:
        self.check_keys(entries, _TAP_KEYS, key, node)
        ok = True
        ifname: str | None = name
        if "ifname" in entries:
            ifname = self.string(entries["ifname"][1], f"{key}.ifname")
        if ifname is not None:
            size = len(ifname.encode("utf-8", "surrogatepass"))
            if not ifname or size >= IFNAMSIZ or any(c in ifname for c in "/: \t\n%") \
                    or ifname in (".", ".."):
                where = entries["ifname"][1] if "ifname" in entries else node
                self.error(where, f"{key}.ifname",
                           f"not a valid interface name: at most {IFNAMSIZ - 1} bytes, no '/', ':', "
                           f"'%' or whitespace (got {ifname!r}, {size} bytes)")
                ok = False
        queues: int | None = DEFAULT_QUEUES
        if "queues" in entries:
            queues = self.integer(entries["queues"][1], f"{key}.queues", MIN_QUEUES, MAX_QUEUES)
        mtu: int | None = None
        if "mtu" in entries:
            mtu = self.integer(entries["mtu"][1], f"{key}.mtu", MIN_MTU, MAX_MTU)
            ok = ok and mtu is not None
        create = True
        if "create" in entries:
            value = self.construct(entries["create"][1], f"{key}.create")
            if not isinstance(value, bool):
                self.error(entries["create"][1], f"{key}.create", f"must be true or false (got {value!r})")
                ok = False
            else:
                create = value
        if not ok or ifname is None or queues is None:
            return None
        return TapPortConfig(name=name, ifname=ifname, queues=queues, mtu=mtu, create=create)

    def check_socket_conflicts(self, sockets: list[_SocketUse]) -> None:
        by_path: dict[str, list[_SocketUse]] = {}
        for use in sockets:
            by_path.setdefault(posixpath.normpath(use.path), []).append(use)
        for uses in by_path.values():
            if len(uses) < 2:
                continue
            for use in uses:
                others = [repr(o.port) for o in uses if o is not use]
                what = "default socket path" if use.derived else "socket path"
                ports = "port" if len(others) == 1 else "ports"
                self.error(use.node, use.key,
                           f"{what} {use.path!r} is also used by {ports} {', '.join(others)}")

    def datapath(self, node: Node) -> DatapathConfig | None:
        entries = self.mapping(node, "datapath")
        if entries is None:
            return None
        self.check_keys(entries, _DATAPATH_KEYS, "datapath", node)
        workers: int | None = DEFAULT_WORKERS
        if "workers" in entries:
            workers = self.integer(entries["workers"][1], "datapath.workers", MIN_WORKERS, MAX_WORKERS)
        mode: str | None = DEFAULT_DATAPATH_MODE
        if "mode" in entries:
            mode = self.choice(entries["mode"][1], "datapath.mode", DATAPATH_MODES)
        if workers is None or mode is None:
            return None
        return DatapathConfig(workers=workers, mode=mode)
