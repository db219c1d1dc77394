"""Model weights on every node: same path, verified against a manifest, fanned out through
a pipelined chain of relays so the controller's link carries one copy. See docs/sync.md.

    from clusterctl.sync import sync_model
    report = sync_model(inventory, "/data/llama-3-8b", hosts=None, verify=False)
    report.ok, report.failed, report.nodes["node1"].state, report.to_dict()
"""
from .report import SyncProgress, SyncReport
from .run import sync_model, sync_path

__all__ = ["sync_model", "sync_path", "SyncReport", "SyncProgress"]
