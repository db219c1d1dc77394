"""Unit tests for clusterctl.gpu_health: parsers from recorded outputs, findings, the gate,
and the gpu_health fact snippet run for real against stub tools.

Fixtures: tests/unit/fixtures/gpu (README.md there names the source of each format).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterctl import gpu_health as gh
from clusterctl.facts import END_MARKER, MARKER, FactRequest, Facts, build_script, parse_output
from clusterctl.gpu_health import (ERROR, INFO, MARK, QUERY_FIELDS, QUERY_FIELDS_EVENTS, WARNING,
                                   DcgmDiag, GpuHealth, GpuStatus, HostGpuInput, XidEvent,
                                   assess, classify_xid, driver_cuda_major, gpu_findings,
                                   gpu_gate, host_input, normalize_bus_id, parse_dcgm_diag,
                                   parse_gpu_health, parse_query_gpu, parse_smi_header,
                                   parse_xid_lines, render_findings)

GPU_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gpu"


def text(name: str) -> str:
    return (GPU_FIXTURES / name).read_text()


def body(query: str, header: str = "smi_header_550.txt", xid: str | None = None,
         xid_source: str = "journal", dcgm: str | None = None, rc: int = 0,
         fields=QUERY_FIELDS) -> str:
    """The gpu_health snippet's output, assembled from fixture files."""
    parts = [f"{MARK} query {rc} {','.join(fields)}\n", text(query) if query else "",
             f"{MARK} header\n", text(header).splitlines(keepends=True)[2] if header else ""]
    parts.append(f"{MARK} xid {xid_source}\n")
    if xid:
        parts.append(text(xid))
    if dcgm:
        parts += [f"{MARK} dcgm\n", text(dcgm), "\n", f"{MARK} dcgm-rc 0\n"]
    return "".join(parts)


def codes(findings, host=None, gpu="any") -> list[str]:
    return sorted(f.code for f in findings
                  if (host is None or f.host == host) and (gpu == "any" or f.gpu == gpu))


# ------------------------------------------------------------------ nvidia-smi query

def test_query_healthy_h100_node():
    gpus, problems = parse_query_gpu(text("query_h100x8_idle.csv"))
    assert problems == []
    assert [g.index for g in gpus] == list(range(8))
    g = gpus[2]
    assert g.name == "NVIDIA H100 80GB HBM3"
    assert g.uuid == "GPU-5c1e0f3a-7d2b-4e9c-8a12-0b6d2f4c9e72"
    assert g.bus_id == "0000:3a:00"
    assert (g.memory_total_mib, g.memory_used_mib, g.utilization_pct) == (81559, 1, 0)
    assert (g.driver_version, g.compute_cap) == ("550.54.15", "9.0")
    assert (g.ecc_uncorrected_volatile, g.ecc_uncorrected_aggregate) == (0, 0)
    assert (g.pcie_gen_current, g.pcie_gen_max, g.pcie_width_current, g.pcie_width_max) == \
        (1, 5, 16, 16)
    assert g.persistence_mode is True
    assert g.temperature_c == 32
    assert g.throttle_reasons == 0x1
    assert g.problems == ()


def test_query_faulty_a100_node_keeps_the_unreachable_gpu_as_a_problem():
    gpus, problems = parse_query_gpu(text("query_a100x5_faults.csv"))
    assert len(gpus) == 4
    assert problems == ["Unable to determine the device handle for GPU0000:87:00.0: Unknown Error"]
    assert gpus[1].ecc_uncorrected_volatile == 2 and gpus[1].ecc_uncorrected_aggregate == 5
    assert gpus[2].pcie_width_current == 8
    assert gpus[3].persistence_mode is False
    assert gpus[3].throttle_reasons == 0x48


def test_query_not_available_values_are_none_and_reset_is_a_problem():
    gpus, problems = parse_query_gpu(text("query_rtx4090x2_na.csv"))
    assert problems == []
    a, b = gpus
    assert a.ecc_uncorrected_volatile is None and a.ecc_uncorrected_aggregate is None
    assert a.persistence_mode is None
    assert b.persistence_mode is False
    assert b.pcie_gen_current is None and b.throttle_reasons is None
    assert b.problems == ("pcie.link.gen.current: GPU requires reset",
                          "pcie.link.gen.max: GPU requires reset")


def test_query_comma_in_the_product_name():
    fields = ("index", "name", "memory.total")
    gpus, problems = parse_query_gpu("0, Tesla V100-SXM2-16GB, rev A, 16160\n", fields)
    assert problems == []
    assert gpus[0].name == "Tesla V100-SXM2-16GB, rev A"
    assert gpus[0].memory_total_mib == 16160


def test_query_with_another_field_list():
    line = "0, NVIDIA L4, GPU-1, 23034, 0, 535.54.03, 00000000:01:00.0\n"
    gpus, _ = parse_query_gpu(line, gh.QUERY_FIELDS_MINIMAL)
    assert gpus[0].bus_id == "0000:01:00" and gpus[0].compute_cap is None
    assert gpus[0].pcie_gen_current is None and gpus[0].persistence_mode is None


def test_query_no_devices_is_empty():
    assert parse_query_gpu("No devices were found\n") == ([], [])


@pytest.mark.parametrize("raw,want", [("00000000:3B:00.0", "0000:3b:00"),
                                      ("PCI:0000:3b:00", "0000:3b:00"),
                                      ("0001:c1:1f.0", "0001:c1:1f"), ("nonsense", None)])
def test_normalize_bus_id(raw, want):
    assert normalize_bus_id(raw) == want


def test_smi_header_new_and_old_layout():
    assert parse_smi_header(text("smi_header_550.txt")) == ("550.54.15", "12.4")
    assert parse_smi_header(text("smi_header_470.txt")) == ("470.82.01", "11.4")
    assert parse_smi_header("NVIDIA-SMI has failed because it couldn't communicate with "
                            "the NVIDIA driver.") == (None, None)


# ------------------------------------------------------------------ XIDs

def test_xids_from_the_journal():
    evs = parse_xid_lines(text("kernel_xid_journal.txt"))
    assert [(e.xid, e.bus_id) for e in evs] == [(13, "0000:07:00"), (13, "0000:07:00"),
                                               (31, "0000:07:00"), (94, "0000:0f:00"),
                                               (79, "0000:87:00")]
    assert evs[0].pid == 48211 and evs[0].process == "python3"
    assert evs[0].text.startswith("Graphics SM Warp Exception")
    assert evs[0].when == "2026-11-30T22:17:40+0000"
    assert evs[2].process == "llama-server"
    fallen = evs[-1]
    assert fallen.pid is None and fallen.process is None
    assert fallen.text == "GPU has fallen off the bus."


def test_xids_from_dmesg():
    evs = parse_xid_lines(text("kernel_xid_dmesg.txt"))
    assert [e.xid for e in evs] == [48, 63, 63, 43, 61]
    assert evs[0].when == "8812.402113s after boot"
    assert evs[-1].pid is None and evs[-1].text.startswith("0cc6(3078)")


def test_xid_classes():
    for fatal in (48, 63, 64, 74, 79, 92, 94, 95):
        assert classify_xid(fatal)[0] == ERROR, fatal
    for app in (13, 31, 43):
        assert classify_xid(app)[0] == WARNING, app
    sev, meaning, fix = classify_xid(99999)
    assert sev == WARNING and "99999" in meaning and "catalog" in fix


# ------------------------------------------------------------------ DCGM

def test_dcgm_v3_all_pass():
    d = parse_dcgm_diag(text("dcgm_diag_r1_v3_pass.json"))
    assert d.ran and d.runtime_error is None and d.version == "3.3.5"
    assert d.failures == [] and d.warnings == []
    assert {r.test for r in d.results} >= {"Denylist", "Persistence Mode", "Inforom"}
    assert d.results[0].gpus == tuple(str(i) for i in range(8))
    assert [r.status for r in d.results if r.test == "Inforom"] == ["skip"]


def test_dcgm_v4_failure_and_warning_per_entity():
    d = parse_dcgm_diag(text("dcgm_diag_r1_v4_fail.json"))
    assert d.ran and d.version == "4.2.3"
    [fail] = d.failures
    assert fail.gpus == ("1",) and fail.category == "Deployment" and fail.test == "software"
    assert "row remapping failed" in fail.messages[0]
    [warn] = d.warnings
    assert warn.gpus == ("3",) and "graphics process" in warn.messages[0]


def test_dcgm_not_running_and_runtime_error():
    d = parse_dcgm_diag(text("dcgm_no_hostengine.txt"))
    assert not d.ran and "Unable to connect to host engine" in d.runtime_error
    d = parse_dcgm_diag('{"DCGM Diagnostic": {"version": "4.2.3", "runtime_error": '
                        '"Error: Unable to run diagnostic on unsupported GPU 0."}}')
    assert not d.ran and d.runtime_error.endswith("unsupported GPU 0.")
    assert parse_dcgm_diag("{not json}").runtime_error.startswith("dcgmi printed JSON")


# ------------------------------------------------------------------ the whole fact

def test_fact_body_of_a_faulty_node():
    h = parse_gpu_health(body("query_a100x5_faults.csv", xid="kernel_xid_journal.txt",
                              dcgm="dcgm_diag_r1_v4_fail.json"))
    assert h.present and len(h.gpus) == 4
    assert (h.driver_version, h.cuda_version) == ("550.54.15", "12.4")
    assert h.query_fields == QUERY_FIELDS
    assert len(h.xids) == 5 and h.xid_source == "journal"
    assert h.dcgm is not None and h.dcgm.failures
    assert h.problems == ("Unable to determine the device handle for GPU0000:87:00.0: "
                          "Unknown Error",)


def test_fact_body_absent_failed_and_garbage():
    assert parse_gpu_health(f"{MARK} absent\n") == GpuHealth(present=False)
    assert parse_gpu_health("") == GpuHealth(present=False)
    h = parse_gpu_health(f"{MARK} query 9 index,name\nNVIDIA-SMI has failed because it "
                         f"couldn't communicate with the NVIDIA driver.\n{MARK} header\n"
                         f"{MARK} xid unreadable\n")
    assert h.present and h.gpus == () and "couldn't communicate" in h.query_error
    assert h.xid_source == "unreadable"
    with pytest.raises(ValueError, match="before the first section"):
        parse_gpu_health("hello\n")
    with pytest.raises(ValueError, match="unknown section"):
        parse_gpu_health(f"{MARK} surprise\n")


def test_fact_through_parse_output_is_on_demand():
    req = FactRequest("gpu_health")
    out = f"\n{MARKER} 0 0 gpu_health\n{body('query_h100x8_idle.csv')}\n{END_MARKER} 1\n"
    facts = parse_output(out, [req])
    assert len(facts.gpu_health.gpus) == 8
    assert facts.to_dict()["gpu_health"]["gpus"][0]["bus_id"] == "0000:18:00"
    from clusterctl.facts import BASE_REQUESTS
    assert req not in BASE_REQUESTS
    with pytest.raises(ValueError, match="takes no argument"):
        build_script([FactRequest("gpu_health", "x")])


STUB_SMI = r"""#!/bin/bash
case "$*" in
  *clocks_throttle_reasons*)
    echo 'Field "clocks_throttle_reasons.active" is not a valid field to query.'; exit 2;;
  *--query-gpu=*) cat "$FIX/query_a100x5_faults.csv"; exit 0;;
  *) cat "$FIX/smi_header_550.txt";;
esac
"""
STUB_JOURNAL = r"""#!/bin/bash
case "$*" in *"-n 1"*) echo "-- kernel line --";; *) cat "$FIX/kernel_xid_journal.txt";; esac
"""
STUB_DCGMI = r"""#!/bin/bash
cat "$FIX/dcgm_diag_r1_v4_fail.json"; exit 226
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_snippet_runs_for_real_against_stub_tools(tmp_path):
    """The fact script with stub nvidia-smi (a driver without clocks_throttle_reasons),
    journalctl and dcgmi: the fallback field list is used and everything parses."""
    for name, script in (("nvidia-smi", STUB_SMI), ("journalctl", STUB_JOURNAL),
                         ("dcgmi", STUB_DCGMI)):
        p = tmp_path / name
        p.write_text(script)
        p.chmod(0o755)
    req = FactRequest("gpu_health")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "FIX": str(GPU_FIXTURES), "LANG": "C"}
    res = subprocess.run(["bash", "-c", build_script([req])], capture_output=True, text=True,
                         env=env, timeout=60)
    h = parse_output(res.stdout, [req]).gpu_health
    assert h.query_fields == QUERY_FIELDS_EVENTS
    assert len(h.gpus) == 4 and h.gpus[3].throttle_reasons == 0x48
    assert h.cuda_version == "12.4"
    assert h.xid_source == "journal" and [e.xid for e in h.xids] == [13, 13, 31, 94, 79]
    assert h.dcgm is not None and len(h.dcgm.failures) == 1


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_snippet_without_nvidia_smi(tmp_path):
    req = FactRequest("gpu_health")
    res = subprocess.run(["bash", "-c", build_script([req])], capture_output=True, text=True,
                         env={"PATH": str(tmp_path) + ":/bin"}, timeout=60)
    # the fact script appends the usual system folders to PATH: a real nvidia-smi there counts
    if not any(os.access(os.path.join(d, "nvidia-smi"), os.X_OK)
               for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                         "/sbin", "/bin", "/usr/local/cuda/bin")):
        assert parse_output(res.stdout, [req]).gpu_health == GpuHealth(present=False)


# ------------------------------------------------------------------ findings

def test_findings_of_a_faulty_node():
    h = parse_gpu_health(body("query_a100x5_faults.csv", xid="kernel_xid_journal.txt",
                              dcgm="dcgm_diag_r1_v4_fail.json"))
    found = gpu_findings("gpu3", HostGpuInput(h, expected_gpus=5))
    by = {(f.code, f.gpu): f for f in found}
    assert by[("ecc-uncorrected", 1)].severity == ERROR
    assert "2 uncorrectable" in by[("ecc-uncorrected", 1)].message
    assert by[("pcie-width", 2)].severity == WARNING
    assert "x8" in by[("pcie-width", 2)].message and "x16" in by[("pcie-width", 2)].message
    gen = by[("pcie-gen", 3)]
    assert gen.severity == WARNING and "97% busy" in gen.message and "idle" in gen.message
    assert "nvidia-smi -pm 1" in by[("persistence-off", 3)].fix
    assert "nvidia-persistenced" in by[("persistence-off", 3)].fix
    assert "hardware thermal slowdown" in by[("clocks-throttled", 3)].message
    assert by[("gpu-hot", 3)].severity == WARNING
    assert by[("gpu-unreachable", None)].severity == ERROR
    # XIDs: app errors warn, fatal ones are errors; one finding per GPU and XID
    assert by[("xid-13", 0)].severity == WARNING and "2 times" in by[("xid-13", 0)].message
    assert by[("xid-31", 0)].severity == WARNING
    assert by[("xid-94", 1)].severity == ERROR
    xid79 = by[("xid-79", None)]
    assert xid79.severity == ERROR and "0000:87:00" in xid79.message
    assert "reboot" in xid79.fix
    # DCGM: a failed software test is an error, a running process only a warning
    assert by[("dcgm-software", 1)].severity == ERROR
    assert by[("dcgm-software", 3)].severity == WARNING
    # 4 GPUs answer, the inventory says 5
    assert by[("gpu-count", None)].severity == ERROR
    assert all(f.host == "gpu3" and f.fix for f in found)


def test_idle_gpus_at_a_low_pcie_gen_are_not_a_finding():
    h = parse_gpu_health(body("query_h100x8_idle.csv", dcgm="dcgm_diag_r1_v3_pass.json"))
    assert gpu_findings("h1", HostGpuInput(h, expected_gpus=8, expected_memory_mib=81559)) == []


def test_consumer_gpus_without_ecc_or_persistence_fields():
    h = parse_gpu_health(body("query_rtx4090x2_na.csv"))
    found = gpu_findings("ws", HostGpuInput(h))
    assert codes(found) == ["gpu-needs-reset", "gpu-needs-reset", "persistence-off"]
    assert {f.gpu for f in found} == {1}


def test_dmesg_xids_map_to_no_gpu_when_the_bus_is_unknown():
    h = parse_gpu_health(body("query_h100x8_idle.csv", xid="kernel_xid_dmesg.txt",
                              xid_source="dmesg"))
    found = gpu_findings("h2", HostGpuInput(h))
    assert codes(found) == ["xid-43", "xid-48", "xid-61", "xid-63"]
    x63 = next(f for f in found if f.code == "xid-63")
    assert "2 times" in x63.message and "GPU at 0000:3b:00" in x63.message
    assert next(f for f in found if f.code == "xid-43").severity == WARNING


def test_inventory_disagreements():
    h = parse_gpu_health(body("query_h100x8_idle.csv"))
    found = gpu_findings("h", HostGpuInput(h, expected_gpus=4, expected_memory_mib=98304))
    by = {f.code: f for f in found}
    assert by["gpu-count"].severity == WARNING and "stay unused" in by["gpu-count"].message
    assert by["gpu-memory"].severity == ERROR and "81559" in by["gpu-memory"].fix
    # within the tolerance (80 GiB written as 81920 MiB): fine
    assert gpu_findings("h", HostGpuInput(h, expected_gpus=8, expected_memory_mib=81920)) == []


def test_no_driver_where_the_inventory_promises_gpus():
    absent = GpuHealth(present=False)
    [f] = gpu_findings("n", HostGpuInput(absent, expected_gpus=2))
    assert f.code == "gpu-driver-missing" and f.severity == ERROR
    assert gpu_findings("cpu", HostGpuInput(absent)) == []
    assert gpu_findings("cpu", HostGpuInput(None, expected_gpus=2)) == []


def test_driver_versus_cuda():
    h = parse_gpu_health(body("query_h100x8_idle.csv"))            # CUDA 12.4 driver
    assert gpu_findings("h", HostGpuInput(h, toolkit_cuda="12.4.131")) == []
    [minor] = gpu_findings("h", HostGpuInput(h, toolkit_cuda="12.6.85"))
    assert minor.code == "driver-old-minor" and minor.severity == WARNING
    [major] = gpu_findings("h", HostGpuInput(h), min_cuda="13.0")
    assert major.code == "driver-too-old" and major.severity == ERROR
    # no banner: the driver version decides the CUDA major
    h470 = GpuHealth(present=True, driver_version="470.82.01")
    assert driver_cuda_major("470.82.01") == 11 and driver_cuda_major("550.54.15") == 12
    assert driver_cuda_major("580.65.06") == 13 and driver_cuda_major("418.1") is None
    [old] = gpu_findings("h", HostGpuInput(h470, toolkit_cuda="12.1"))
    assert old.code == "driver-too-old"


def test_dcgm_not_running_is_only_information():
    h = parse_gpu_health(body("query_h100x8_idle.csv", dcgm="dcgm_no_hostengine.txt"))
    [f] = gpu_findings("h", HostGpuInput(h))
    assert f.code == "dcgm-not-run" and f.severity == INFO
    h = parse_gpu_health(body("query_h100x8_idle.csv", xid_source="unreadable"))
    assert [(f.code, f.severity) for f in gpu_findings("h", HostGpuInput(h))] == \
        [("xid-unreadable", INFO)]


def test_assess_and_gate():
    good = parse_gpu_health(body("query_h100x8_idle.csv"))
    bad = parse_gpu_health(body("query_a100x5_faults.csv", xid="kernel_xid_journal.txt"))
    hosts = {"head": HostGpuInput(GpuHealth(present=False)), "g1": HostGpuInput(good),
             "g2": HostGpuInput(bad), "g3": HostGpuInput(good)}
    findings, passing, failing = assess(hosts)
    assert passing == ["head", "g1", "g3"] and failing == ["g2"]
    sev = [f.severity for f in findings]
    assert sev == sorted(sev, key=gh.SEVERITY_ORDER.get)
    allowed, refused = gpu_gate(findings, ["head", "g1", "g2", "g3"], force=False)
    assert allowed == ["head", "g1", "g3"]
    assert list(refused) == ["g2"]
    assert "uncorrectable ECC" in refused["g2"] and "XID 79" in refused["g2"]
    assert gpu_gate(findings, ["head", "g1", "g2", "g3"], force=True) == \
        (["head", "g1", "g2", "g3"], {})
    # hosts outside the deployment are not judged
    assert gpu_gate(findings, ["g1"], force=False) == (["g1"], {})
    text_out = render_findings(findings)
    assert "ERROR   g2:" in text_out and "fix:" in text_out


def test_assess_is_deterministic_and_does_not_mutate():
    bad = parse_gpu_health(body("query_a100x5_faults.csv", xid="kernel_xid_journal.txt",
                                dcgm="dcgm_diag_r1_v4_fail.json"))
    hosts = {"a": HostGpuInput(bad, expected_gpus=5), "b": HostGpuInput(bad)}
    before = repr(hosts)
    assert assess(hosts) == assess(hosts)
    assert repr(hosts) == before


@dataclass
class _Host:
    vars: dict = field(default_factory=dict)


def test_host_input_from_inventory_and_facts():
    h = parse_gpu_health(body("query_h100x8_idle.csv"))
    facts = Facts({FactRequest("gpu_health"): h, FactRequest("nvcc"): "12.4.131"})
    got = host_input(_Host({"gpus": 8, "gpu_memory_mib": 81559}), facts)
    assert got == HostGpuInput(h, expected_gpus=8, expected_memory_mib=81559,
                               toolkit_cuda="12.4.131")
    assert host_input(_Host(), Facts({})) == HostGpuInput(None)


# ------------------------------------------------------------------ untrusted input

@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400))
def test_parsers_never_crash_on_arbitrary_text(s):
    parse_query_gpu(s)
    parse_xid_lines(s)
    parse_smi_header(s)
    assert isinstance(parse_dcgm_diag(s), DcgmDiag)
    try:
        parse_gpu_health(s)
    except ValueError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["0", "1", "[N/A]", "[Not Supported]", "Enabled", "x",
                                 "0x00000000000000ff", "", "12.0", "-3", "GPU-1",
                                 "00000000:3B:00.0"]), min_size=len(QUERY_FIELDS),
                max_size=len(QUERY_FIELDS)))
def test_query_rows_of_odd_values(cols):
    cols[0] = "0"
    gpus, problems = parse_query_gpu(", ".join(cols))
    assert len(gpus) == 1 and problems == []
    found = gpu_findings("h", HostGpuInput(GpuHealth(present=True, gpus=tuple(gpus))))
    assert all(f.severity in (ERROR, WARNING, INFO) for f in found)


def test_xid_event_and_status_are_frozen():
    with pytest.raises(Exception):
        XidEvent(1, "0000:00:00", None, None, "").xid = 2          # type: ignore[misc]
    with pytest.raises(Exception):
        GpuStatus(0, "x").index = 1                                # type: ignore[misc]


# ------------------------------------------------------------------ deploy-model's gate

@dataclass(eq=False)
class _InvHost:
    name: str
    gpus: int | None = None
    vars: dict = field(default_factory=dict)


class _StubConn:
    """Runs what deploy-model sends (the fact script) with bash, stub tools first on PATH."""

    def __init__(self, name, stub_dir, query_fixture):
        self.name, self.stub_dir, self.query = name, stub_dir, query_fixture
        self.commands = []

    def run(self, cmd, check=True, **kw):
        from clusterctl.remote import RunResult
        self.commands.append(cmd)
        env = {"PATH": f"{self.stub_dir}:/usr/bin:/bin", "FIX": str(GPU_FIXTURES),
               "QUERY": self.query, "LANG": "C"}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        return RunResult("bash", p.returncode, p.stdout, p.stderr)


@pytest.fixture
def stub_tools(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/bash\ncase "$*" in\n  *--query-gpu=*) cat "$FIX/$QUERY";;\n'
                   '  *) cat "$FIX/smi_header_550.txt";;\nesac\n')
    smi.chmod(0o755)
    journal = tmp_path / "journalctl"
    journal.write_text('#!/bin/bash\necho "-- kernel line --"\n')
    journal.chmod(0o755)
    return tmp_path


def _facts_with_gpus(n: int) -> Facts:
    from clusterctl.facts import GPU
    return Facts({FactRequest("gpus"): [GPU(i, "X", 40960, "8.0") for i in range(n)],
                  FactRequest("nvcc"): None})


def test_deploy_gate_refuses_a_failing_gpu_host_unless_forced(stub_tools):
    from clusterctl.deploy.launch import DeployOptions, check_gpu_health
    from clusterctl.errors import ClusterctlError
    hosts = [_InvHost("head"), _InvHost("g1"), _InvHost("g2", gpus=4)]
    facts = {"head": _facts_with_gpus(0), "g1": _facts_with_gpus(8), "g2": _facts_with_gpus(4)}
    conns = {"head": _StubConn("head", stub_tools, "query_h100x8_idle.csv"),
             "g1": _StubConn("g1", stub_tools, "query_h100x8_idle.csv"),
             "g2": _StubConn("g2", stub_tools, "query_a100x5_faults.csv")}
    logged: list[str] = []
    with pytest.raises(ClusterctlError) as exc:
        check_gpu_health(hosts, facts, conns, DeployOptions(), logged.append)
    msg = str(exc.value)
    assert "1 host(s) not fit to serve (g2)" in msg
    assert "uncorrectable ECC" in msg and "fix:" in msg and "--force" in msg
    assert "--limit '!g2'" in msg
    assert conns["head"].commands == []                 # no GPUs: not asked
    assert any(ln.startswith("WARNING: g2:") and "persistence" in ln for ln in logged)
    logged.clear()
    found = check_gpu_health(hosts, facts, conns, DeployOptions(force=True), logged.append)
    assert any(f.host == "g2" and f.severity == ERROR for f in found)
    assert any(ln.startswith("WARNING: g2:") and "uncorrectable ECC" in ln for ln in logged)


def test_deploy_gate_passes_healthy_and_cpu_only_clusters(stub_tools):
    from clusterctl.deploy.launch import DeployOptions, check_gpu_health
    conns = {"g1": _StubConn("g1", stub_tools, "query_h100x8_idle.csv")}
    assert check_gpu_health([_InvHost("g1")], {"g1": _facts_with_gpus(8)}, conns,
                            DeployOptions()) == []
    assert check_gpu_health([_InvHost("c1")], {"c1": _facts_with_gpus(0)}, {},
                            DeployOptions()) == []


def test_deploy_model_has_a_force_flag():
    from clusterctl.cli.deploy import deploy_model_command
    assert "force" in {p.name for p in deploy_model_command.params}


# ------------------------------------------------------------------ bench/gpu-check.sh

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu-check.sh"


def test_gpu_check_script_parses_and_its_fallback_flags_are_the_roles():
    import re
    subprocess.run(["bash", "-n", str(BENCH)], check=True, timeout=30)
    res = subprocess.run(["bash", str(BENCH), "--help"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0 and "--until STEP" in res.stdout
    from clusterctl.engine.build import build_flags
    from clusterctl.facts import GPU
    facts = Facts({FactRequest("gpus"): [GPU(0, "X", 81559, "9.0")], FactRequest("nvcc"): "12.4"})
    flags, use_cuda = build_flags(facts, True)
    block = BENCH.read_text().split("except Exception as exc:", 1)[1].split("origin =", 1)[0]
    assert use_cuda
    assert re.findall(r'"(-D[^"]+)"', block) + ["-DCMAKE_CUDA_ARCHITECTURES=90"] == flags


def test_gpu_check_script_refuses_bad_options():
    for args in (["--gpu", "x"], ["--until", "nowhere"], ["--bogus"]):
        res = subprocess.run(["bash", str(BENCH), *args], capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 2 and "gpu-check:" in res.stderr, args
