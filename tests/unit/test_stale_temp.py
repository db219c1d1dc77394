"""What an interrupted atomic write leaves beside its final path is removed by the next
write of that path, unless a process still has it open (a write in progress)."""
from __future__ import annotations

import subprocess

from clusterctl.remote import _finish_steps, stale_temp_cleanup


def test_next_write_removes_leftovers_but_not_a_file_being_written(tmp_path):
    final = tmp_path / "llama.cpp.tar"
    stale = tmp_path / "llama.cpp.tar.clusterctl-0badf00d"
    busy = tmp_path / "llama.cpp.tar.clusterctl-1234abcd"
    other = tmp_path / "other.tar.clusterctl-0badf00d"
    for f in (stale, busy, other):
        f.write_bytes(b"partial")
    tmp = tmp_path / "llama.cpp.tar.clusterctl-feedbeef"
    tmp.write_bytes(b"complete")
    with open(busy, "ab"):                      # held open, as an sftp-server would
        script = " && ".join(_finish_steps(str(tmp), str(final), 0o644, None, None))
        proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert final.read_bytes() == b"complete" and oct(final.stat().st_mode)[-3:] == "644"
        assert not stale.exists() and not tmp.exists()
        assert busy.exists()                    # in use: kept
        assert other.exists()                   # another path's: not ours to judge


def test_cleanup_with_nothing_to_clean_and_odd_names_never_fails(tmp_path):
    odd = tmp_path / "we ird'name;$(touch x)"
    proc = subprocess.run(["sh", "-c", stale_temp_cleanup(str(odd))], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0 and not (tmp_path / "x").exists(), proc.stderr
