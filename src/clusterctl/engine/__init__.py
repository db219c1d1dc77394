"""Plan/execute engine: roles and playbooks, facts, ops, handlers, recap."""
