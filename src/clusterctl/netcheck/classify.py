"""Link classes and what each is fit for (pure).

The classes and their verdicts follow the network table of the multi-node
inference guides: 1GbE is too slow for tensor parallel (TP) and only fit for
pipeline parallel (PP) of small models, 10GbE is the minimum for PP and marginal
for TP, 25/100GbE is good for PP and workable for TP, InfiniBand HDR/NDR is
excellent for both, NVLink is inside one node only and the gold standard for TP.

A measured TCP rate belongs to a class when it reaches 80% of the class's line
rate (iperf3 over TCP sees ~94% of line rate on a healthy link). The thresholds
of the issue are applied to the class, not to the raw figure: a 1GbE link that
measures 0.95 Gbit/s is a 1GbE link, not "below 1 Gbit/s".
"""
from __future__ import annotations

from dataclasses import dataclass

CLASS_FRACTION = 0.8   # measured / nominal at which a link still counts as that class
TP_MIN_GBPS = 10.0     # cross-node links below this: tensor parallel across them is unfit
ANY_MIN_GBPS = 1.0     # cross-node links below this: unfit for any distributed inference


@dataclass(frozen=True)
class LinkClass:
    name: str
    nominal_gbps: float          # line rate, Gbit/s
    medium: str                  # "ethernet" | "infiniband" | "nvlink"
    tp: str                      # verdict for tensor parallel over this link
    pp: str                      # verdict for pipeline parallel over this link

    @property
    def fit_for_tp(self) -> bool:
        return self.nominal_gbps >= TP_MIN_GBPS

    @property
    def fit_for_any(self) -> bool:
        return self.nominal_gbps >= ANY_MIN_GBPS


BELOW_1GBE = LinkClass("below 1GbE", 0.0, "ethernet", "unfit", "unfit")
ETHERNET = [
    BELOW_1GBE,
    LinkClass("1GbE", 1.0, "ethernet", "unfit", "small models only"),
    LinkClass("10GbE", 10.0, "ethernet", "marginal", "minimum viable"),
    LinkClass("25/100GbE", 25.0, "ethernet", "workable", "good"),
]
INFINIBAND = [
    LinkClass("IB below EDR", 0.0, "infiniband", "marginal", "good"),
    LinkClass("IB EDR", 100.0, "infiniband", "workable", "good"),
    LinkClass("IB HDR", 200.0, "infiniband", "excellent", "excellent"),
    LinkClass("IB NDR", 400.0, "infiniband", "excellent", "excellent"),
]
NVLINK = LinkClass("NVLink", 400.0, "nvlink", "gold standard", "excellent")
ALL_CLASSES = [*ETHERNET, *INFINIBAND, NVLINK]


def classify(gbps: float | None, medium: str = "ethernet") -> LinkClass | None:
    """The class a measured rate (Gbit/s) belongs to; None when not measured.

    For InfiniBand pass the port rate from ibstat (Gbit/s), not an IPoIB iperf3
    figure: IPoIB runs through the kernel and says little about RDMA bandwidth.
    """
    if gbps is None:
        return None
    if medium == "nvlink":
        return NVLINK
    table = INFINIBAND if medium == "infiniband" else ETHERNET
    best = table[0]
    for cls in table[1:]:
        if gbps >= cls.nominal_gbps * CLASS_FRACTION:
            best = cls
    return best


def link_verdict(cls: LinkClass) -> str:
    """One line: what this cross-node link is fit for."""
    if not cls.fit_for_any:
        return (f"{cls.name}: unfit for any distributed inference (below {ANY_MIN_GBPS:g} Gbit/s)")
    if not cls.fit_for_tp:
        return (f"{cls.name}: too slow for tensor parallel across nodes (below "
                f"{TP_MIN_GBPS:g} Gbit/s); pipeline parallel {cls.pp}")
    return f"{cls.name}: tensor parallel {cls.tp}, pipeline parallel {cls.pp}"


def recommend(worst: LinkClass | None, *, nodes: int, gpus_per_node: int | None = None) -> str:
    """The parallelism layout the slowest cross-node link allows.

    TP inside a node (NVLink/PCIe), PP across nodes: tensor_parallel_size = GPUs
    per node, pipeline_parallel_size = number of nodes.
    """
    tp = str(gpus_per_node) if gpus_per_node else "GPUs per node"
    layout = f"tensor_parallel_size={tp}, pipeline_parallel_size={nodes}"
    if nodes < 2 or worst is None:
        return f"single node: tensor parallel inside the node (tensor_parallel_size={tp})"
    if not worst.fit_for_any:
        return (f"slowest cross-node link is {worst.name}: fix it before running anything across "
                f"nodes; until then run the model on one node")
    if not worst.fit_for_tp:
        return (f"slowest cross-node link is {worst.name}: tensor parallel inside each node, "
                f"pipeline parallel across nodes ({layout}), and only for small models; "
                f"never tensor parallel across nodes")
    if worst.tp in ("excellent", "gold standard"):
        return (f"slowest cross-node link is {worst.name}: {layout} is the default; tensor "
                f"parallel across nodes is also viable")
    return (f"slowest cross-node link is {worst.name}: tensor parallel inside each node, "
            f"pipeline parallel across nodes ({layout}); tensor parallel across nodes "
            f"is {worst.tp}")
