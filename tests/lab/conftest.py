"""The `lab` fixture: one real lab (3 systemd-nspawn nodes) for the whole test session.

Needs root, systemd-nspawn and debootstrap (skipped with the reason otherwise). The first
run builds the node image and the offline mirror into /var/cache/clusterctl (or
$CLUSTERCTL_CACHE); later runs reuse them. The lab is ALWAYS brought down at the end,
also when `up` fails halfway (and `up` itself removes what it created when it fails).

Environment: CLUSTERCTL_TEST_LAB (lab name, default citest), CLUSTERCTL_TEST_LAB_LINK
(link class, default 1gbit), CLUSTERCTL_TEST_LAB_MIRROR=0 (no mirror),
CLUSTERCTL_TEST_LAB_WAIT (seconds to wait while another live test session uses the same
lab name, default 900).
"""
from __future__ import annotations

import os
import time

import pytest

from labtools import LAB_LINK, LAB_MIRROR, LAB_NAME, LAB_NODES, LAB_WAIT  # noqa: E402


def lab_skip_reason() -> str | None:
    from clusterctl.lab import host
    if os.geteuid() != 0:
        return "lab tests need root (they create a bridge and systemd-nspawn nodes)"
    tools = host.LAB_TOOLS + (host.MIRROR_TOOLS if LAB_MIRROR else ())
    missing = host.missing_tools(tools)
    if missing:
        packages = sorted({host.TOOLS.get(t, t) for t in missing})
        return (f"lab tests need {', '.join(missing)}: apt-get install {' '.join(packages)}")
    return None


def wait_for_other_session(name: str) -> None:
    """Never pull a lab from under another live test session that uses the same name:
    wait for it to finish (its lab's owner process is recorded in the lab's state)."""
    from clusterctl import lab as labs
    deadline = time.monotonic() + LAB_WAIT
    while True:
        state = labs.load_state(name)
        if state is None or state.owner_pid == os.getpid() or not labs.owner_alive(state):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"lab {name} is in use by another test session (pid "
                        f"{state.owner_pid}); set CLUSTERCTL_TEST_LAB to another name")
        time.sleep(2)


@pytest.fixture(scope="session")
def lab():
    """A LabState: .nodes (name, ip, port, pid), .inventory_path, .bridge_ip, .mirror_url."""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    from clusterctl import lab as labs
    wait_for_other_session(LAB_NAME)
    labs.down(LAB_NAME)                      # leftovers of an interrupted session
    try:
        yield labs.up(LAB_NAME, nodes=LAB_NODES, link=LAB_LINK, mirror=LAB_MIRROR)
    finally:
        labs.down(LAB_NAME)


@pytest.fixture
def lab_name_for(lab):
    """Names for extra labs a test brings up, derived from the session lab's name (so a
    second test session with another CLUSTERCTL_TEST_LAB never meets them)."""
    def make(suffix: str) -> str:
        name = f"{lab.name[:31 - len(suffix)]}-{suffix}"
        wait_for_other_session(name)
        return name
    return make
