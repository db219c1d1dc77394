"""Debian packages fanned out (engine/debs.py): what apt would fetch, fetched once by the
controller and checked against apt's size and hash."""
from __future__ import annotations

import hashlib
import json
import subprocess

from clusterctl.engine import debs
from clusterctl.engine.debs import Deb

PRINT_URIS = """\
'http://198.18.2.1:8080/apt/./perl-base_5.36.0-7%2bdeb12u4_amd64.deb' perl-base_5.36.0-7+deb12u4_amd64.deb 1609596 MD5Sum:d3703ee700fda887302f358a82adfbf3
'http://deb.example.invalid/debian/pool/main/j/jq/jq_1.6-2.1_amd64.deb' jq_1.6-2.1_amd64.deb 64652 SHA256:9f2c0b3a
'http://198.18.2.1:8080/apt/./evil.deb' ../../etc/evil.deb 10 SHA256:00
'file:///etc/passwd' passwd.deb 10 SHA256:00
Reading package lists...
"""


def test_parse_print_uris_keeps_plain_archive_names_only():
    found = debs.parse_print_uris(PRINT_URIS)
    assert sorted(found) == ["jq_1.6-2.1_amd64.deb", "perl-base_5.36.0-7+deb12u4_amd64.deb"]
    perl = found["perl-base_5.36.0-7+deb12u4_amd64.deb"]
    assert perl.size == 1609596 and perl.hash.startswith("MD5Sum:")
    assert perl.uri.endswith("%2bdeb12u4_amd64.deb")


def test_print_uris_command_changes_nothing_on_the_node():
    install = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
               "--no-install-recommends", "jq", "curl"]
    cmd = debs.print_uris_command(install)
    assert cmd[:6] == ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install",
                       "--print-uris", "-qq"]
    assert cmd[-2:] == ["jq", "curl"]


def _deb(tmp_path, name, body: bytes, kind="SHA256", digest=None):
    src = tmp_path / "src" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(body)
    algo = {"SHA256": "sha256", "MD5Sum": "md5"}[kind]
    return Deb(src.as_uri(), name, len(body),
               f"{kind}:{digest or hashlib.new(algo, body).hexdigest()}")


def test_stage_fetches_once_checks_hashes_and_names_the_set_by_content(tmp_path):
    good = _deb(tmp_path, "a_1_amd64.deb", b"a" * 1000)
    md5 = _deb(tmp_path, "b_1_all.deb", b"b" * 10, kind="MD5Sum")
    bad = _deb(tmp_path, "c_1_amd64.deb", b"c" * 10, digest="0" * 64)
    root = tmp_path / "cache"
    staged = debs.stage({d.name: d for d in (good, md5, bad)}, root=root)
    assert [d.name for d in staged.sent] == ["a_1_amd64.deb", "b_1_all.deb"]
    assert [d.name for d in staged.missed] == ["c_1_amd64.deb"]     # the node fetches it
    assert staged.bytes == 1010
    assert sorted(p.name for p in staged.path.iterdir()) == ["DEBS.json", "a_1_amd64.deb",
                                                             "b_1_all.deb"]
    assert (staged.path / "a_1_amd64.deb").stat().st_ino == \
        (root / "pool" / "a_1_amd64.deb").stat().st_ino                  # a link, no copy
    assert json.loads((staged.path / "DEBS.json").read_text())["set"] == staged.id
    assert not list((root / "pool").glob(".*part"))
    (tmp_path / "src" / "a_1_amd64.deb").unlink()                        # pool is reused
    again = debs.stage({d.name: d for d in (good, md5)}, root=root)
    assert again.id == staged.id and not again.missed
    assert debs.set_id([good]) != staged.id


def test_a_wrong_size_in_the_pool_is_fetched_again(tmp_path):
    good = _deb(tmp_path, "a_1_amd64.deb", b"a" * 100)
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / good.name).write_bytes(b"short")
    assert debs.fetch(good, pool)
    assert (pool / good.name).read_bytes() == b"a" * 100


def test_link_command_puts_the_archives_into_apts_cache(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "x_1+b1_all.deb").write_bytes(b"x")
    archives = tmp_path / "archives"
    archives.mkdir()
    cmd = debs.link_command(str(folder), ["x_1+b1_all.deb"]).replace(
        debs.APT_ARCHIVES, str(archives))
    subprocess.run(["bash", "-c", cmd], check=True)
    assert (archives / "x_1+b1_all.deb").read_bytes() == b"x"
