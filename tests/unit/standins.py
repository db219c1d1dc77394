"""Fixtures shared by unit test modules (imported by name: `from standins import started`;
no tests/unit/conftest.py, since a second conftest module would shadow the lab tier's)."""
import pytest


@pytest.fixture
def started():
    """Every stand-in process a test starts (append it); killed at the end whatever happened."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
