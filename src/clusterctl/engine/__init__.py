"""Plan/execute engine: roles and playbooks, facts, ops, handlers, recap."""
from . import runner, mtu  # noqa: F401  (mtu registers its cluster executor)
