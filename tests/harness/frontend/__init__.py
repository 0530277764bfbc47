"""Independent vhost-user front-end used by the tests (see ``vhost_frontend``)."""

from .vhost_frontend import *  # noqa: F401,F403
from .vhost_frontend import __all__  # noqa: F401
