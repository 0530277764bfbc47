"""Independent vhost-user front-end used by the tests (see ``vhost_frontend``;
packed rings in ``packed_ring``)."""

from . import packed_ring as _packed_ring
from . import vhost_frontend as _vhost_frontend
from .packed_ring import *  # noqa: F401,F403
from .vhost_frontend import *  # noqa: F401,F403

__all__ = [*_vhost_frontend.__all__, *_packed_ring.__all__]
