"""Fixtures shared by the unit tests."""
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
