"""Plan/execute engine: roles and playbooks, facts, ops, handlers, cluster steps, recap."""
from . import runner  # noqa: F401  (registers the engine's own ops: llamacpp_build, ray_cluster)
