"""netcheck: prove the cluster network is fit for distributed inference.

Pure parts: `schedule` (round-robin tournament), `classify` (link classes and
TP/PP verdicts), `findings` (measurements -> findings with fixes), `report`
(rich tables, JSON, SVG/HTML). I/O: `probe` (the commands and their parsers),
`run` (orchestration over `clusterctl.remote`). CLI: `clusterctl.cli.netcheck`.
"""
from __future__ import annotations

from .model import Finding, Link, NetcheckResult, NodeInfo, PortCheck, Settings

__all__ = ["Finding", "Link", "NetcheckResult", "NodeInfo", "PortCheck", "Settings",
           "run_netcheck", "NetcheckOptions"]


def __getattr__(name):  # lazy: the pure modules must not pull in paramiko
    if name in ("run_netcheck", "NetcheckOptions"):
        from . import run
        return getattr(run, name)
    raise AttributeError(name)
