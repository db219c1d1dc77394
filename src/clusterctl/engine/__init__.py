"""Plan/execute engine: roles and playbooks, facts, ops, handlers, recap."""
from . import runner, mtu, build  # noqa: F401  (mtu and build register cluster executors)
