"""GPU readiness of NVIDIA nodes: pure parsers, findings with fixes, a deploy gate.

What a node tells (gathered in one go by `SNIPPET`, the `gpu_health` fact kind):

* `nvidia-smi --query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits`: one line per
  GPU (field names as in `nvidia-smi --help-query-gpu`). Values the driver cannot give
  read "[N/A]" / "[Not Supported]"; a GPU in trouble reads "[GPU requires reset]",
  "[Unknown Error]" or makes nvidia-smi print "Unable to determine the device handle
  for GPU ...". Newer drivers renamed clocks_throttle_reasons.* to
  clocks_event_reasons.*, and old ones lack compute_cap: the snippet falls back to
  other field lists and says which one answered.
* the `nvidia-smi` banner: "Driver Version: 550.54.15   CUDA Version: 12.4" (the CUDA
  version is the newest the driver supports, not an installed toolkit).
* kernel log lines `NVRM: Xid (PCI:0000:3b:00): 79, pid=..., name=..., <text>` from
  the current boot (journalctl -k, else dmesg). XID meanings: NVIDIA's "Xid Errors"
  catalog (docs for the data center drivers).
* `dcgmi diag -r 1 -j` when DCGM is installed: JSON, {"DCGM GPU Diagnostic" (DCGM <= 3)
  or "DCGM Diagnostic" (DCGM 4): {"test_categories": [{"category", "tests": [{"name",
  "results": [{"status", "gpu_id"/"gpu_ids"/"entity_id", "warnings", "info"}]}]}],
  "runtime_error"?}} (DCGM's NvvsJsonStrings.h and dcgmi/Diag.cpp).

`assess()` turns per-host facts into (findings, passing hosts, failing hosts);
`gpu_gate()` is what deploy-model asks before it places anything on a node.
Nothing here does I/O; this module imports only the standard library.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}

# the field list, then the two this module needs to map XIDs to GPUs and to
# tell an idle GPU's PCIe downclock from a degraded link
QUERY_FIELDS: tuple[str, ...] = (
    "index", "name", "uuid", "memory.total", "memory.used", "driver_version", "compute_cap",
    "ecc.errors.uncorrected.volatile.total", "ecc.errors.uncorrected.aggregate.total",
    "pcie.link.gen.current", "pcie.link.gen.max", "pcie.link.width.current",
    "pcie.link.width.max", "persistence_mode", "temperature.gpu",
    "clocks_throttle_reasons.active", "pci.bus_id", "utilization.gpu")
# drivers that dropped the clocks_throttle_reasons.* names
QUERY_FIELDS_EVENTS = tuple("clocks_event_reasons.active" if f == "clocks_throttle_reasons.active"
                            else f for f in QUERY_FIELDS)
# drivers too old for compute_cap / pcie / ecc fields: what is left
QUERY_FIELDS_MINIMAL: tuple[str, ...] = ("index", "name", "uuid", "memory.total",
                                         "memory.used", "driver_version", "pci.bus_id")

MARK = "##gpu_health"

PCIE_BUSY_UTILIZATION = 50      # % above which a PCIe gen below max is not idle downclocking
HOT_CELSIUS = 87
MEMORY_TOLERANCE = 0.02         # inventory's gpu_memory_mib may exceed the real one by this share

# clocks_throttle_reasons / clocks_event_reasons bits (NVML nvmlClocksThrottleReason*)
THROTTLE_BITS = {0x1: "idle", 0x2: "applications clocks setting", 0x4: "software power cap",
                 0x8: "hardware slowdown", 0x10: "sync boost",
                 0x20: "software thermal slowdown", 0x40: "hardware thermal slowdown",
                 0x80: "hardware power brake slowdown", 0x100: "display clock setting"}
THROTTLE_BAD = 0x8 | 0x20 | 0x40 | 0x80


def _q(fields: Iterable[str]) -> str:
    return ",".join(fields)


def _nvsmi_query(fields: tuple[str, ...]) -> str:
    return (f"o=$(_t 30 nvidia-smi --query-gpu={_q(fields)} --format=csv,noheader,nounits 2>&1); "
            f"r=$?; f={_q(fields)}")


# Runs on the node (bash, inside the fact script's subshell: LC_ALL=C, nullglob, stderr
# discarded). Every tool has a time limit: a hung GPU must not hang the fact gathering.
SNIPPET = f"""\
_t() {{ if command -v timeout >/dev/null; then timeout "$@"; else shift; "$@"; fi; }}
if ! command -v nvidia-smi >/dev/null; then echo "{MARK} absent"; exit 0; fi
{_nvsmi_query(QUERY_FIELDS)}
if [ $r -ne 0 ]; then {_nvsmi_query(QUERY_FIELDS_EVENTS)}; fi
if [ $r -ne 0 ]; then {_nvsmi_query(QUERY_FIELDS_MINIMAL)}; fi
echo "{MARK} query $r $f"
printf '%s\\n' "$o"
echo "{MARK} header"
_t 30 nvidia-smi 2>&1 | grep -m1 -E 'Driver Version|CUDA Version|NVIDIA-SMI has failed'
k=; command -v journalctl >/dev/null && k=$(_t 20 journalctl -k -b 0 -n 1 -q --no-pager 2>/dev/null)
if [ -n "$k" ]; then
  echo "{MARK} xid journal"
  _t 60 journalctl -k -b 0 -o short-iso -q --no-pager 2>/dev/null |
    grep -F 'NVRM: Xid' | tail -n 200
elif [ -n "$(dmesg 2>/dev/null | head -n 1)" ]; then
  echo "{MARK} xid dmesg"
  dmesg 2>/dev/null | grep -F 'NVRM: Xid' | tail -n 200
else
  echo "{MARK} xid unreadable"
fi
if command -v dcgmi >/dev/null; then
  d=$(_t 120 dcgmi diag -r 1 -j 2>&1); r=$?
  echo "{MARK} dcgm"
  printf '%s\\n' "$d"
  echo "{MARK} dcgm-rc $r"
fi
exit 0"""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class GpuStatus:
    index: int
    name: str
    uuid: str | None = None
    bus_id: str | None = None                 # "0000:3b:00" (domain:bus:device, lower case)
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    utilization_pct: int | None = None
    driver_version: str | None = None
    compute_cap: str | None = None
    ecc_uncorrected_volatile: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    persistence_mode: bool | None = None
    temperature_c: int | None = None
    throttle_reasons: int | None = None       # bit mask
    problems: tuple[str, ...] = ()            # "[GPU requires reset]" in a field, ...


@dataclass(frozen=True)
class XidEvent:
    xid: int
    bus_id: str                               # "0000:3b:00"
    pid: int | None
    process: str | None
    text: str                                 # what follows pid/name
    when: str | None = None                   # journal timestamp or seconds since boot


@dataclass(frozen=True)
class DcgmResult:
    category: str
    test: str
    status: str                               # pass | fail | warn | skip | other (lower case)
    gpus: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()


@dataclass(frozen=True)
class DcgmDiag:
    ran: bool                                 # JSON with test results came back
    version: str | None = None
    runtime_error: str | None = None          # dcgmi's error (no host engine, not supported, ...)
    results: tuple[DcgmResult, ...] = ()

    @property
    def failures(self) -> list[DcgmResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def warnings(self) -> list[DcgmResult]:
        return [r for r in self.results if r.status == "warn"]


@dataclass(frozen=True)
class GpuHealth:
    """The `gpu_health` fact of one host."""

    present: bool                             # nvidia-smi is installed
    gpus: tuple[GpuStatus, ...] = ()
    query_fields: tuple[str, ...] = ()        # the field list nvidia-smi answered
    query_error: str | None = None            # nvidia-smi failed for every field list
    driver_version: str | None = None
    cuda_version: str | None = None           # newest CUDA the driver supports
    xids: tuple[XidEvent, ...] = ()
    xid_source: str | None = None             # journal | dmesg | unreadable | None (not asked)
    dcgm: DcgmDiag | None = None              # None: dcgmi not installed
    problems: tuple[str, ...] = ()            # lines nvidia-smi printed about lost GPUs, ...


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str                             # error | warning | info
    host: str
    message: str
    fix: str
    gpu: int | None = None

    def to_json(self) -> dict:
        return {"code": self.code, "severity": self.severity, "host": self.host,
                "gpu": self.gpu, "message": self.message, "fix": self.fix}


# --------------------------------------------------------------------------- parsers

_BAD_VALUES = {"[gpu requires reset]": "GPU requires reset", "[gpu lost]": "GPU lost",
               "[unknown error]": "unknown error"}


def _value(raw: str) -> str | None:
    v = raw.strip()
    if not v or v.startswith("[") or v in ("N/A", "Not Supported", "Unknown"):
        return None
    return v


def _int(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


def normalize_bus_id(text: str) -> str | None:
    """'00000000:3B:00.0' (nvidia-smi) or '0000:3b:00' (kernel log) -> '0000:3b:00'."""
    m = re.match(r"^\s*(?:PCI:)?([0-9a-fA-F]{1,8}):([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})"
                 r"(?:\.[0-7])?\s*$", text)
    if not m:
        return None
    return f"{int(m.group(1), 16):04x}:{int(m.group(2), 16):02x}:{int(m.group(3), 16):02x}"


def parse_query_gpu(text: str, fields: Iterable[str] = QUERY_FIELDS
                    ) -> tuple[list[GpuStatus], list[str]]:
    """Lines of `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`.

    Returns (GPUs, problems): lines that are not CSV rows of these fields (nvidia-smi's
    own error messages about a GPU it cannot reach) are problems, not exceptions.
    """
    fields = tuple(fields)
    gpus: list[GpuStatus] = []
    problems: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) > len(fields) and "name" in fields:      # a comma in the product name
            i = fields.index("name")
            extra = len(cols) - len(fields)
            cols[i:i + extra + 1] = [", ".join(cols[i:i + extra + 1])]
        is_row = len(cols) == len(fields) and ("index" not in fields
                                                or cols[fields.index("index")].isdigit())
        if not is_row:
            if "No devices were found" not in line:
                problems.append(line.strip())
            continue
        raw = dict(zip(fields, cols))
        bad = tuple(sorted({f"{k}: {_BAD_VALUES[v.lower()]}" for k, v in raw.items()
                            if v.lower() in _BAD_VALUES}))
        val = {k: _value(v) for k, v in raw.items()}
        throttle = (val.get("clocks_throttle_reasons.active")
                    or val.get("clocks_event_reasons.active"))
        try:
            mask = int(throttle, 16) if throttle else None
        except ValueError:
            mask = None
        pm = val.get("persistence_mode")
        gpus.append(GpuStatus(
            index=int(raw["index"]), name=raw.get("name", ""), uuid=val.get("uuid"),
            bus_id=normalize_bus_id(val["pci.bus_id"]) if val.get("pci.bus_id") else None,
            memory_total_mib=_int(val.get("memory.total")),
            memory_used_mib=_int(val.get("memory.used")),
            utilization_pct=_int(val.get("utilization.gpu")),
            driver_version=val.get("driver_version"), compute_cap=val.get("compute_cap"),
            ecc_uncorrected_volatile=_int(val.get("ecc.errors.uncorrected.volatile.total")),
            ecc_uncorrected_aggregate=_int(val.get("ecc.errors.uncorrected.aggregate.total")),
            pcie_gen_current=_int(val.get("pcie.link.gen.current")),
            pcie_gen_max=_int(val.get("pcie.link.gen.max")),
            pcie_width_current=_int(val.get("pcie.link.width.current")),
            pcie_width_max=_int(val.get("pcie.link.width.max")),
            persistence_mode=None if pm is None else pm.lower() in ("enabled", "on", "1"),
            temperature_c=_int(val.get("temperature.gpu")),
            throttle_reasons=mask, problems=bad))
    return gpus, problems


def parse_smi_header(text: str) -> tuple[str | None, str | None]:
    """(driver version, CUDA version) from nvidia-smi's banner line."""
    drv = re.search(r"Driver Version:\s*([0-9][0-9.]*)", text)
    cuda = re.search(r"CUDA Version:\s*([0-9][0-9.]*)", text)
    return (drv.group(1) if drv else None, cuda.group(1) if cuda else None)


_XID_RE = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9a-fA-F]{1,8}:[0-9a-fA-F]{1,2}:[0-9a-fA-F]{1,2})"
                     r"(?:\.[0-7])?\):\s*(\d+),\s*(.*)$")
_ISO_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[^ ]*)\s")
_DMESG_RE = re.compile(r"^\[\s*(\d+\.\d+)\]")


def parse_xid_lines(text: str) -> list[XidEvent]:
    """XID events from kernel log lines (journalctl -k -o short-iso, dmesg, syslog);
    other lines are ignored."""
    out = []
    for line in text.splitlines():
        m = _XID_RE.search(line)
        if not m:
            continue
        rest = m.group(3).strip()
        pid = proc = None
        pm = re.match(r"pid=('?<?unknown>?'?|\d+)\s*,\s*", rest)
        if pm:
            pid = int(pm.group(1)) if pm.group(1).isdigit() else None
            rest = rest[pm.end():]
            nm = re.match(r"name=([^,]*),\s*", rest)
            if nm:
                proc = nm.group(1).strip() or None
                if proc in ("<unknown>", "'<unknown>'"):
                    proc = None
                rest = rest[nm.end():]
        when = None
        t = _ISO_RE.match(line) or _DMESG_RE.match(line)
        if t:
            when = t.group(1) if t.re is _ISO_RE else f"{t.group(1)}s after boot"
        out.append(XidEvent(xid=int(m.group(2)), bus_id=normalize_bus_id(m.group(1)) or m.group(1),
                            pid=pid, process=proc, text=rest.strip(), when=when))
    return out


_REBOOT = ("drain the node, reset the GPU (`nvidia-smi -r -i <index>`, no process may use it) "
           "or reboot")
_RMA = "if it comes back after a reset, the GPU or its slot is faulty (RMA)"

# XID -> (severity, meaning, fix). From NVIDIA's Xid catalog; XIDs not here are warnings.
XIDS: dict[int, tuple[str, str, str]] = {
    8: (WARNING, "GPU stopped processing (application or driver)", "restart the application; "
        "if it recurs, update the driver"),
    13: (WARNING, "graphics engine exception: an application error (out-of-range access, "
         "illegal instruction)", "fix the application; the GPU itself is fine"),
    31: (WARNING, "GPU memory page fault: usually an application's illegal address",
         "fix the application; if several applications hit it, test the GPU (dcgmi diag -r 3)"),
    32: (WARNING, "invalid or corrupted push buffer stream", "restart the application; "
         "check the PCIe link if it recurs"),
    43: (WARNING, "GPU stopped processing: an application error (the GPU recovers)",
         "fix or restart the application"),
    45: (WARNING, "preemptive cleanup after an earlier error (process killed)",
         "look at the XID logged before this one"),
    48: (ERROR, "double-bit ECC error (uncorrectable memory error)",
         f"{_REBOOT} so the page is retired / the row remapped; {_RMA}"),
    61: (ERROR, "internal micro-controller breakpoint/warning", f"{_REBOOT}; update the driver"),
    62: (ERROR, "internal micro-controller halt", f"{_REBOOT}; update the driver"),
    63: (ERROR, "ECC page retirement or row remapping recorded: pending until reset",
         f"{_REBOOT} so the remap takes effect"),
    64: (ERROR, "ECC page retirement or row remapper recording failure",
         f"{_REBOOT}; {_RMA}"),
    68: (WARNING, "video processor exception", "restart the application"),
    69: (WARNING, "graphics engine class error", "restart the application"),
    74: (ERROR, "NVLink error", f"{_REBOOT}; check `nvidia-smi nvlink -s`; {_RMA}"),
    79: (ERROR, "GPU has fallen off the bus", "reboot (a GPU reset is not possible); check "
         "power cables, seating and the PCIe slot; " + _RMA),
    92: (ERROR, "high single-bit ECC error rate", f"{_REBOOT}; run `dcgmi diag -r 3`; {_RMA}"),
    94: (ERROR, "contained ECC error (the affected application was stopped)",
         f"{_REBOOT} to remap the row; {_RMA}"),
    95: (ERROR, "uncontained ECC error (every application on the GPU is affected)",
         f"{_REBOOT}; {_RMA}"),
    119: (ERROR, "GSP RPC timeout", f"{_REBOOT}; update the driver"),
    120: (ERROR, "GSP error", f"{_REBOOT}; update the driver"),
    140: (ERROR, "unrecovered ECC error", f"{_REBOOT}; {_RMA}"),
    154: (ERROR, "GPU recovery action changed (the driver asks for a reset or reboot)",
          "do what the XID line asks: reset the GPU or reboot the node"),
}


def classify_xid(xid: int) -> tuple[str, str, str]:
    """(severity, meaning, fix) of an XID."""
    return XIDS.get(xid, (WARNING, f"XID {xid}", "look it up in NVIDIA's Xid catalog"))


def _walk_results(root: dict) -> list[DcgmResult]:
    out = []
    for cat in root.get("test_categories") or []:
        if not isinstance(cat, dict):
            continue
        for test in cat.get("tests") or []:
            if not isinstance(test, dict):
                continue
            for res in test.get("results") or []:
                if not isinstance(res, dict):
                    continue
                status = str(res.get("status", "")).strip().lower()
                status = {"passed": "pass", "failed": "fail", "warning": "warn",
                          "skipped": "skip"}.get(status, status)
                if status not in ("pass", "fail", "warn", "skip"):
                    status = "other"
                group = str(res.get("entity_group", "GPU"))
                ids = [res.get(k) for k in ("gpu_id", "gpu_ids") if res.get(k) is not None]
                if not ids and res.get("entity_id") is not None and group.upper() == "GPU":
                    ids = [res["entity_id"]]
                gpus = tuple(g.strip() for i in ids for g in str(i).split(",") if g.strip())
                msgs = []
                for w in res.get("warnings") or []:
                    text = w.get("warning") if isinstance(w, dict) else w
                    if text:
                        msgs.append(" ".join(str(text).split()))
                if status in ("fail", "warn") and not msgs:
                    msgs = [" ".join(str(i).split()) for i in res.get("info") or [] if i]
                out.append(DcgmResult(category=str(cat.get("category", "")),
                                      test=str(test.get("name", "")), status=status,
                                      gpus=gpus, messages=tuple(msgs)))
    return out


def parse_dcgm_diag(text: str) -> DcgmDiag:
    """Output of `dcgmi diag -r 1 -j` (DCGM 2.x-4.x shapes; text around the JSON is
    ignored, text without JSON is the runtime error)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        msg = " ".join(text.split())[:300]
        return DcgmDiag(ran=False, runtime_error=msg or "dcgmi printed nothing")
    try:
        data = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        return DcgmDiag(ran=False, runtime_error=f"dcgmi printed JSON that does not parse: {exc}")
    if not isinstance(data, dict):
        return DcgmDiag(ran=False, runtime_error="dcgmi printed JSON that is not an object")
    root = data.get("DCGM Diagnostic") or data.get("DCGM GPU Diagnostic") or data
    if not isinstance(root, dict):
        root = {}
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    version = root.get("version") or meta.get("version")
    err = root.get("runtime_error") or data.get("runtime_error")
    results = _walk_results(root)
    return DcgmDiag(ran=bool(results), version=str(version) if version else None,
                    runtime_error=" ".join(str(err).split()) if err else None,
                    results=tuple(results))


def _sections(body: str) -> list[tuple[list[str], str]]:
    out: list[tuple[list[str], str]] = []
    for line in body.splitlines(keepends=True):
        if line.startswith(MARK + " "):
            out.append((line[len(MARK) + 1:].split(), ""))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + line)
        elif line.strip():
            raise ValueError("gpu_health: unexpected line before the first section: "
                             f"{line.strip()[:120]!r}")
    return out


def parse_gpu_health(body: str) -> GpuHealth:
    """The output of `SNIPPET`. Empty output (the snippet did not run) = not present."""
    sections = _sections(body)
    if not sections or sections[0][0] == ["absent"]:
        return GpuHealth(present=False)
    kw: dict[str, Any] = {"present": True}
    problems: list[str] = []
    for head, text in sections:
        kind = head[0]
        if kind == "query":
            if len(head) != 3 or not re.match(r"^-?\d+$", head[1]):
                raise ValueError(f"gpu_health: malformed query section header {head!r}")
            fields = tuple(head[2].split(","))
            kw["query_fields"] = fields
            if head[1] != "0":
                kw["query_error"] = " ".join(text.split())[:300] or f"nvidia-smi exited {head[1]}"
                continue
            gpus, extra = parse_query_gpu(text, fields)
            kw["gpus"] = tuple(gpus)
            problems.extend(extra)
        elif kind == "header":
            drv, cuda = parse_smi_header(text)
            kw["driver_version"], kw["cuda_version"] = drv, cuda
            if "NVIDIA-SMI has failed" in text:
                problems.append(" ".join(text.split())[:300])
        elif kind == "xid":
            kw["xid_source"] = head[1] if len(head) > 1 else None
            kw["xids"] = tuple(parse_xid_lines(text))
        elif kind == "dcgm":
            kw["dcgm"] = parse_dcgm_diag(text)
        elif kind == "dcgm-rc":
            continue
        else:
            raise ValueError(f"gpu_health: unknown section {kind!r}")
    if kw.get("driver_version") is None:
        kw["driver_version"] = next((g.driver_version for g in kw.get("gpus", ())
                                     if g.driver_version), None)
    kw["problems"] = tuple(problems)
    return GpuHealth(**kw)


def parse_gpu_health_fact(body: str, rc: int, arg: str) -> GpuHealth:
    """facts.py parser signature: (body, rc, arg)."""
    return parse_gpu_health(body)


# --------------------------------------------------------------------------- findings


def _version_tuple(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts[:3]) if parts else None


# minimum Linux driver per CUDA major version (NVIDIA's CUDA toolkit release notes,
# "minor version compatibility"): used only when nvidia-smi's banner gave no CUDA version
_MIN_DRIVER_FOR_CUDA_MAJOR = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 0, 0)}


def driver_cuda_major(driver_version: str | None) -> int | None:
    """Newest CUDA major version a Linux driver supports (from its version)."""
    drv = _version_tuple(driver_version)
    if drv is None:
        return None
    ok = [major for major, need in _MIN_DRIVER_FOR_CUDA_MAJOR.items() if drv >= need]
    return max(ok) if ok else None


@dataclass(frozen=True)
class HostGpuInput:
    """What `assess` needs of one host."""

    health: GpuHealth | None                  # None: the fact was not gathered
    expected_gpus: int | None = None          # inventory `gpus` (None: detect)
    expected_memory_mib: int | None = None    # inventory `gpu_memory_mib`
    toolkit_cuda: str | None = None           # nvcc on the host (facts.nvcc), if any


def host_input(host: Any, facts: Any) -> HostGpuInput:
    """From an inventory Host (its `vars`) and its Facts (gpu_health, nvcc when gathered)."""
    def fact(kind: str):
        for req in getattr(facts, "requests", []):
            if req.kind == kind and not req.arg:
                return facts.get(req)
        return None
    hvars = getattr(host, "vars", {}) or {}
    return HostGpuInput(health=fact("gpu_health"), expected_gpus=hvars.get("gpus"),
                        expected_memory_mib=hvars.get("gpu_memory_mib"),
                        toolkit_cuda=fact("nvcc"))


def _gpu_label(g: GpuStatus) -> str:
    return f"GPU {g.index} ({g.name}{', ' + g.bus_id if g.bus_id else ''})"


def _throttle_names(mask: int) -> str:
    return ", ".join(name for bit, name in THROTTLE_BITS.items() if mask & bit)


def gpu_findings(host: str, data: HostGpuInput, *, min_cuda: str | None = None) -> list[Finding]:
    """Findings of one host. `min_cuda`: the CUDA version the engine to deploy needs."""
    h = data.health
    out: list[Finding] = []

    def add(code, severity, message, fix, gpu=None):
        out.append(Finding(code, severity, host, message, fix, gpu))

    if h is None:
        return out
    if not h.present:
        if data.expected_gpus:
            add("gpu-driver-missing", ERROR,
                f"the inventory says {data.expected_gpus} GPU(s) but nvidia-smi is not installed",
                "install the NVIDIA driver (and reboot), or set gpus: 0 for this host")
        return out
    if h.query_error:
        add("gpu-query-failed", ERROR, f"nvidia-smi cannot query the GPUs: {h.query_error}",
            "check `nvidia-smi` on the node: a driver/library version mismatch after an "
            "upgrade needs a reboot; a missing kernel module needs the driver reinstalled")
    for p in h.problems:
        add("gpu-unreachable", ERROR, f"nvidia-smi: {p}",
            f"{_REBOOT}; {_RMA}")

    bus_to_gpu = {g.bus_id: g for g in h.gpus if g.bus_id}
    for g in h.gpus:
        label = _gpu_label(g)
        for p in g.problems:
            add("gpu-needs-reset", ERROR, f"{label}: {p}", f"{_REBOOT}; {_RMA}", g.index)
        if g.ecc_uncorrected_volatile:
            add("ecc-uncorrected", ERROR,
                f"{label}: {g.ecc_uncorrected_volatile} uncorrectable ECC error(s) since the "
                f"driver loaded", f"{_REBOOT}; check `nvidia-smi -q -d ROW_REMAPPER,"
                f"PAGE_RETIREMENT -i {g.index}`; {_RMA}", g.index)
        elif g.ecc_uncorrected_aggregate:
            add("ecc-uncorrected-history", WARNING,
                f"{label}: {g.ecc_uncorrected_aggregate} uncorrectable ECC error(s) in its "
                f"lifetime (none since the driver loaded)",
                f"check `nvidia-smi -q -d ROW_REMAPPER,PAGE_RETIREMENT -i {g.index}` for pending "
                f"remaps or retirements; watch whether the count grows", g.index)
        if g.pcie_width_current and g.pcie_width_max and g.pcie_width_current < g.pcie_width_max:
            add("pcie-width", WARNING,
                f"{label}: PCIe link x{g.pcie_width_current}, the GPU and slot can do "
                f"x{g.pcie_width_max} (host<->GPU bandwidth cut accordingly)",
                "reseat the GPU / riser, check the slot's lane setting in the BIOS and "
                "`lspci -vv` LnkSta; the width does not drop when idle", g.index)
        if (g.pcie_gen_current and g.pcie_gen_max and g.pcie_gen_current < g.pcie_gen_max
                and g.utilization_pct is not None and g.utilization_pct >= PCIE_BUSY_UTILIZATION):
            add("pcie-gen", WARNING,
                f"{label}: PCIe gen {g.pcie_gen_current} of {g.pcie_gen_max} while the GPU is "
                f"{g.utilization_pct}% busy (idle GPUs lower the gen to save power; a busy one "
                f"should not)", "check the slot's PCIe generation in the BIOS, the riser and "
                "`lspci -vv` LnkSta under load; reseat the GPU", g.index)
        if g.persistence_mode is False:
            add("persistence-off", WARNING,
                f"{label}: persistence mode is off (every CUDA start re-initialises the GPU, "
                f"seconds each; settings reset when idle)",
                "`sudo nvidia-smi -pm 1`, or better `sudo systemctl enable --now "
                "nvidia-persistenced`", g.index)
        if g.throttle_reasons and g.throttle_reasons & THROTTLE_BAD:
            add("clocks-throttled", WARNING,
                f"{label}: clocks held down ({_throttle_names(g.throttle_reasons & THROTTLE_BAD)})",
                "check cooling, fans, power supply and power cables; `nvidia-smi -q -d "
                "PERFORMANCE` shows the reason", g.index)
        if g.temperature_c is not None and g.temperature_c >= HOT_CELSIUS:
            add("gpu-hot", WARNING, f"{label}: {g.temperature_c} C",
                "check airflow and fans; hot GPUs throttle", g.index)

    # XIDs: one finding per (GPU, XID)
    grouped: dict[tuple[str, int], list[XidEvent]] = {}
    for ev in h.xids:
        grouped.setdefault((ev.bus_id, ev.xid), []).append(ev)
    for (bus, xid), evs in sorted(grouped.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        sev, meaning, fix = classify_xid(xid)
        g = bus_to_gpu.get(bus)
        where = _gpu_label(g) if g else f"GPU at {bus}"
        last = evs[-1]
        times = f" {len(evs)} times" if len(evs) > 1 else ""
        when = f", last at {last.when}" if last.when else ""
        proc = f" (process {last.process})" if last.process else ""
        add(f"xid-{xid}", sev, f"{where}: XID {xid}{times} this boot{when}: {meaning}{proc}: "
            f"{last.text[:160]}", fix, g.index if g else None)
    if h.xid_source == "unreadable":
        add("xid-unreadable", INFO, "the kernel log cannot be read by this user: XID errors "
            "were not checked", "connect as root or add the user to the systemd-journal group")

    if h.dcgm is not None:
        if not h.dcgm.ran:
            add("dcgm-not-run", INFO, f"dcgmi diag -r 1 did not run: {h.dcgm.runtime_error}",
                "start the DCGM host engine (`sudo systemctl enable --now nvidia-dcgm`) to get "
                "DCGM's checks")
        soft = ("Graphics Processes", "Persistence Mode", "Environment Variables",
                "Environmental Variables")
        for r in h.dcgm.failures + h.dcgm.warnings:
            sev = ERROR if r.status == "fail" and r.test not in soft else WARNING
            gpus = f" on GPU {','.join(r.gpus)}" if r.gpus else ""
            msg = "; ".join(r.messages)[:300] or "no details"
            add("dcgm-" + re.sub(r"[^a-z0-9]+", "-", r.test.lower()).strip("-"), sev,
                f"DCGM diag {r.category}/{r.test} {r.status}{gpus}: {msg}",
                "see `dcgmi diag -r 1 -v`; run `dcgmi diag -r 3` on a drained node for the "
                "hardware tests", int(r.gpus[0]) if len(r.gpus) == 1 and r.gpus[0].isdigit()
                else None)

    # inventory vs reality
    n = len(h.gpus)
    if data.expected_gpus is not None and not h.query_error:
        if n < data.expected_gpus:
            add("gpu-count", ERROR, f"the inventory says {data.expected_gpus} GPU(s), "
                f"nvidia-smi sees {n}", "a GPU fell off the bus or is not bound to the driver "
                "(`lspci -d 10de:`, kernel log); or fix `gpus` in the inventory")
        elif n > data.expected_gpus:
            add("gpu-count", WARNING, f"the inventory says {data.expected_gpus} GPU(s), "
                f"nvidia-smi sees {n}: the rest stay unused", "set `gpus` in the inventory "
                "to the real count (or remove it to detect)")
    if data.expected_memory_mib:
        mems = [g.memory_total_mib for g in h.gpus if g.memory_total_mib]
        if mems and data.expected_memory_mib > min(mems) * (1 + MEMORY_TOLERANCE):
            add("gpu-memory", ERROR, f"the inventory says {data.expected_memory_mib} MiB per "
                f"GPU, the smallest GPU here has {min(mems)} MiB: plans would not fit",
                f"set gpu_memory_mib: {min(mems)} (or remove it to detect)")

    # driver vs CUDA
    need = [(what, v) for what, v in (("the CUDA toolkit here (nvcc)", data.toolkit_cuda),
                                      ("the engine", min_cuda)) if v]
    have = _version_tuple(h.cuda_version)
    have_major = have[0] if have else driver_cuda_major(h.driver_version)
    for what, version in need:
        want = _version_tuple(version)
        if want is None or have_major is None:
            continue
        drv = f"driver {h.driver_version or '?'}"
        if want[0] > have_major:
            add("driver-too-old", ERROR, f"{drv} supports CUDA {h.cuda_version or have_major}; "
                f"{what} is for CUDA {version}", "install a driver that supports CUDA "
                f"{want[0]}.x (or use a build for CUDA {have_major}.x)")
        elif have is not None and want[:2] > have[:2]:
            add("driver-old-minor", WARNING, f"{drv} supports CUDA {h.cuda_version}, {what} "
                f"is CUDA {version}: works through minor-version compatibility unless code "
                f"needs PTX JIT or newer driver features", "update the driver to one that "
                f"supports CUDA {'.'.join(map(str, want[:2]))}")
    return out


def assess(hosts: Mapping[str, HostGpuInput], *, min_cuda: str | None = None
           ) -> tuple[list[Finding], list[str], list[str]]:
    """(findings, passing hosts, failing hosts): a host fails on any error finding.
    Hosts keep the mapping's order; findings are sorted by severity, host."""
    findings: list[Finding] = []
    for name, data in hosts.items():
        findings.extend(gpu_findings(name, data, min_cuda=min_cuda))
    failing = {f.host for f in findings if f.severity == ERROR}
    order = {h: i for i, h in enumerate(hosts)}
    findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], order.get(f.host, 0),
                                 -1 if f.gpu is None else f.gpu, f.code))
    return (findings, [h for h in hosts if h not in failing], [h for h in hosts if h in failing])


def gpu_gate(findings: Iterable[Finding], hosts: Iterable[str], force: bool
             ) -> tuple[list[str], dict[str, str]]:
    """(allowed hosts, refused host -> reason). A host with an error finding is refused,
    unless `force`: then every host is allowed and nothing is refused (the caller shows
    the findings as warnings)."""
    hosts = list(hosts)
    reasons: dict[str, list[str]] = {}
    for f in findings:
        if f.severity == ERROR and f.host in hosts:
            reasons.setdefault(f.host, []).append(f.message)
    if force:
        return hosts, {}
    refused = {h: "; ".join(reasons[h]) for h in hosts if h in reasons}
    return [h for h in hosts if h not in refused], refused


def render_findings(findings: Iterable[Finding]) -> str:
    """Plain text: one finding per line, with its fix below."""
    lines = []
    for f in findings:
        lines.append(f"{f.severity.upper():7} {f.host}: {f.message}")
        lines.append(f"        fix: {f.fix}")
    return "\n".join(lines)


__all__ = ["QUERY_FIELDS", "SNIPPET", "GpuStatus", "XidEvent", "DcgmResult", "DcgmDiag",
           "GpuHealth", "Finding", "HostGpuInput", "parse_query_gpu", "parse_smi_header",
           "parse_xid_lines", "classify_xid", "parse_dcgm_diag", "parse_gpu_health",
           "parse_gpu_health_fact", "normalize_bus_id", "driver_cuda_major", "host_input",
           "gpu_findings", "assess", "gpu_gate", "render_findings"]
