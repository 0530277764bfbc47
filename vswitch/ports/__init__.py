"""The switch's port types and the registry from a port's configuration to its class.

* vhost_user.py: a vhost-user port (a guest's virtio-net device, either socket role);
* tap.py: a TAP device as a port (the host kernel as the uplink); tapdev.py opens it;
* vxlan.py: a VXLAN tunnel endpoint (frames over UDP to peer VTEPs);
* base.py: the `Port` protocol they share, `ChangeResult`, backoff and task helpers.

The config's `type:` selects the config class (vswitch/config/model.py), the
config class selects the port class here; the reload planner asks the same
registry how each field of a port changes (IN_PLACE / AT_CONNECT / RESTART).
"""

from __future__ import annotations

from ..config import TapPortConfig, VhostUserPortConfig, VxlanPortConfig
from .base import ChangeResult, Port, PortEnv, PortView, RateLimitedLog
from .tap import TapPort
from .vhost_user import VhostUserPort
from .vxlan import VxlanPort

PORT_CLASSES: dict[type, type] = {
    VhostUserPortConfig: VhostUserPort,
    TapPortConfig: TapPort,
    VxlanPortConfig: VxlanPort,
}


def port_class(config: object) -> type[Port]:
    """The class that runs a port of this configuration."""
    try:
        return PORT_CLASSES[type(config)]
    except KeyError:
        raise TypeError(f"no port type for {type(config).__name__}") from None


def create_port(config: object, env: PortEnv) -> Port:
    """A new, not yet started, port for `config`."""
    return port_class(config)(config, env)


__all__ = ["ChangeResult", "Port", "PortEnv", "PortView", "RateLimitedLog", "TapPort",
           "VhostUserPort", "VxlanPort", "PORT_CLASSES", "create_port", "port_class"]
