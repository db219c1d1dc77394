"""sync manifests and the per-node diff (pure)."""
import pytest

from clusterctl.sync.manifest import (FileEntry, Manifest, RemoteFile, diff, parse_listing,
                                      same_mtime, summarize_reasons)

SHA_A, SHA_B, SHA_X = "a" * 64, "b" * 64, "f" * 64


def _manifest(hashed=True):
    return Manifest.from_scan({"kind": "dir", "files": [
        {"path": "model.safetensors", "size": 1000, "mtime_ns": 5_000_000_123,
         "sha256": SHA_A if hashed else None},
        {"path": "config.json", "size": 10, "mtime_ns": 7_000_000_000,
         "sha256": SHA_B if hashed else None},
    ]}, "m")


def test_from_scan_sorts_and_sums():
    m = _manifest()
    assert list(m.files) == ["config.json", "model.safetensors"]
    assert m.total_bytes == 1010
    assert m.kind == "dir" and m.complete


def test_single_file_source_takes_the_model_name():
    m = Manifest.from_scan({"kind": "file", "files": [
        {"path": "tiny.gguf", "size": 9, "mtime_ns": 1, "sha256": None}]}, "tiny-q4.gguf")
    assert list(m.files) == ["tiny-q4.gguf"]
    assert m.unhashed() == ["tiny-q4.gguf"]


def test_round_trip_dict():
    m = _manifest()
    again = Manifest.from_dict(m.to_dict())
    assert again.files == m.files and again.kind == "dir"


def test_fresh_node_needs_everything():
    need = diff(_manifest(), {})
    assert need.send == {"config.json": 0, "model.safetensors": 0}
    assert need.needed_bytes == 1010
    assert set(need.reasons.values()) == {"missing"}
    assert not need.complete


def test_identical_by_size_and_mtime():
    m = _manifest()
    listing = {p: RemoteFile(e.size, e.mtime_ns) for p, e in m.files.items()}
    need = diff(m, listing)
    assert need.complete and need.needed_bytes == 0
    assert sorted(need.identical) == ["config.json", "model.safetensors"]


def test_mtime_compared_to_the_microsecond():
    assert same_mtime(5_000_000_123, 5_000_000_999)
    assert not same_mtime(5_000_000_123, 5_000_001_000)


def test_size_or_mtime_change_is_sent():
    m = _manifest()
    listing = {"model.safetensors": RemoteFile(999, 5_000_000_123),
               "config.json": RemoteFile(10, 8_000_000_000)}
    need = diff(m, listing)
    assert need.reasons == {"model.safetensors": "size differs", "config.json": "mtime differs"}


def test_verify_compares_sha256_even_when_size_and_mtime_match():
    m = _manifest()
    listing = {"model.safetensors": RemoteFile(1000, 5_000_000_123, SHA_X),
               "config.json": RemoteFile(10, 7_000_000_000, SHA_B)}
    assert diff(m, listing).complete                     # the cheap check is fooled
    need = diff(m, listing, verify=True)
    assert need.send == {"model.safetensors": 0}
    assert need.reasons == {"model.safetensors": "sha256 differs"}


def test_verify_ignores_mtime_when_sha256_matches():
    m = _manifest()
    listing = {"model.safetensors": RemoteFile(1000, 1, SHA_A),
               "config.json": RemoteFile(10, 2, SHA_B)}
    assert diff(m, listing, verify=True).complete


def test_verify_needs_a_complete_manifest():
    with pytest.raises(ValueError):
        diff(_manifest(hashed=False), {}, verify=True)


def test_partial_file_is_the_resume_point():
    m = _manifest()
    key = m.files["model.safetensors"].partial_key
    need = diff(m, {}, {key: 400})
    assert need.send["model.safetensors"] == 400
    assert need.needed_bytes == 1010 - 400


def test_partial_larger_than_the_file_is_ignored():
    m = _manifest()
    key = m.files["model.safetensors"].partial_key
    assert diff(m, {}, {key: 5000}).send["model.safetensors"] == 0


def test_partial_key_changes_with_the_file_version():
    a = FileEntry("x", 10, 1, None)
    assert a.partial_key == FileEntry("x", 10, 1, SHA_A).partial_key
    assert a.partial_key != FileEntry("x", 11, 1, None).partial_key
    assert a.partial_key != FileEntry("x", 10, 2, None).partial_key
    assert a.partial_key != FileEntry("y", 10, 1, None).partial_key


def test_with_digests_fills_and_flags_contradictions():
    m = _manifest(hashed=False)
    m2, changed = m.with_digests({"config.json": SHA_B, "nope": SHA_X})
    assert m2.files["config.json"].sha256 == SHA_B and not changed
    assert m.files["config.json"].sha256 is None          # not mutated
    m3, changed = m2.with_digests({"config.json": SHA_X})
    assert changed == ["config.json"] and m3.files["config.json"].sha256 == SHA_B


def test_survey_spec_and_listing():
    m = _manifest()
    spec = m.survey_spec("/opt/models/m", "/opt/models/m/.clusterctl-sync", verify=True)
    assert spec["hash"] is True and spec["root"] == "/opt/models/m"
    assert [f["path"] for f in spec["files"]] == ["config.json", "model.safetensors"]
    assert spec["files"][1]["key"] == m.files["model.safetensors"].partial_key
    listing = parse_listing({"files": {"config.json": {"size": 10, "mtime_ns": 3,
                                                       "sha256": SHA_B}}})
    assert listing == {"config.json": RemoteFile(10, 3, SHA_B)}


def test_summarize_reasons():
    need = diff(_manifest(), {"config.json": RemoteFile(1, 1)})
    assert summarize_reasons(need) in ("1 missing, 1 size differs", "1 size differs, 1 missing")
