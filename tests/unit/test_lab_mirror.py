"""Pure parts of the offline mirror and of the image's archive discovery."""
import hashlib
import os
import urllib.request

import pytest

from clusterctl import mirror
from clusterctl.errors import InputError
from clusterctl.lab.image import debian_mirror_url
from clusterctl.lab.core import PACKAGES_FILE

SIM = """\
NOTE: This is only a simulation!
Reading package lists...
Inst libfoo1 (1.2-3 Debian:12.5/stable [amd64])
Inst python3.11 [3.11.2-6] (3.11.2-6+deb12u9 Debian-Security:12/stable-security [amd64]) []
Inst tzdata (2024a-0+deb12u1 Debian:12.5/stable [all])
Inst libc6:amd64 (2.36-9+deb12u14 Debian:12.13/stable [amd64])
Conf libfoo1 (1.2-3 Debian:12.5/stable [amd64])
"""


def test_parse_simulated_installs():
    assert mirror.parse_simulated_installs(SIM) == [
        ("libfoo1", "1.2-3", "amd64"), ("python3.11", "3.11.2-6+deb12u9", "amd64"),
        ("tzdata", "2024a-0+deb12u1", "all"), ("libc6", "2.36-9+deb12u14", "amd64")]


def test_deb_filename_quotes_the_epoch_like_apt():
    assert mirror.deb_filename("bsdutils", "1:2.38.1-5+deb12u3", "amd64") == \
        "bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb"
    assert mirror.deb_filename("less", "590-2.1~deb12u2", "amd64") == \
        "less_590-2.1~deb12u2_amd64.deb"


def test_parse_pip_download():
    out = """Collecting ray[default]==2.60.0
  Processing /opt/x/six-1.17.0-py2.py3-none-any.whl
Saved ./w/six-1.17.0-py2.py3-none-any.whl
  File was already downloaded /m/.work/wheels/ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl
Successfully downloaded six ray
"""
    assert mirror.parse_pip_download(out) == [
        "six-1.17.0-py2.py3-none-any.whl", "ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl"]


@pytest.mark.parametrize("fname,project", [
    ("ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl", "ray"),
    ("Jinja2-3.1.4-py3-none-any.whl", "jinja2"),
    ("opencensus_context-0.1.3-py2.py3-none-any.whl", "opencensus-context"),
    ("smart_open-7.0.4.tar.gz", "smart-open"),
    ("README.txt", None)])
def test_dist_project(fname, project):
    assert mirror.dist_project(fname) == project


def test_find_links_page_links_every_file():
    page = mirror.find_links_page(["b-1.0-py3-none-any.whl", "a-1+local-py3-none-any.whl"])
    assert page.index("a-1%2Blocal") < page.index("b-1.0")
    assert '<a href="b-1.0-py3-none-any.whl">' in page


def test_release_file_hashes():
    data = b"Package: x\n"
    text = mirror.release_file({"Packages": data})
    assert f" {hashlib.sha256(data).hexdigest()} {len(data):>16} Packages" in text
    assert text.startswith("Origin: clusterctl")


def test_apt_line_and_pip_args():
    assert mirror.apt_source_line("http://198.18.1.1:8080/apt/") == \
        "deb [trusted=yes] http://198.18.1.1:8080/apt ./"
    assert mirror.pip_install_args("http://198.18.1.1:8080/pip") == [
        "--no-index", "--find-links", "http://198.18.1.1:8080/pip/",
        "--trusted-host", "198.18.1.1"]


def test_lab_package_list_is_data(tmp_path):
    apt, pip = mirror.read_package_lists(PACKAGES_FILE)
    assert "iperf3" in apt and "nftables" in apt
    assert "ray[default]==2.60.0" in pip
    bad = tmp_path / "bad.yaml"
    bad.write_text("apt: iperf3\n")
    with pytest.raises(InputError, match="apt must be a list"):
        mirror.read_package_lists(bad)


def test_bad_apt_package_name_is_refused(tmp_path):
    with pytest.raises(InputError, match="bad apt package"):
        mirror.build_mirror(tmp_path, ["ok", "rm -rf /"], [])


def test_inputs_change_with_the_lists(tmp_path):
    a = mirror.mirror_inputs(["b", "a", "a"], ["ray==1"], None)
    assert a["apt"] == ["a", "b"]
    assert a != mirror.mirror_inputs(["a"], ["ray==1"], None)
    assert not mirror.mirror_is_current(tmp_path, ["a"], [], image=None)


def test_serve_and_stop_a_directory(tmp_path):
    (tmp_path / "apt").mkdir()
    (tmp_path / "apt" / "Packages").write_text("Package: x\n")
    served = mirror.serve_mirror(tmp_path, "127.0.0.1", 0, pick_free_port=True,
                                 log_file=tmp_path / "log")
    try:
        assert mirror.is_serving(served)
        body = urllib.request.urlopen(f"{served.url}/apt/Packages", timeout=5).read()
        assert body == b"Package: x\n"
    finally:
        assert mirror.stop_mirror(served)
    assert not mirror.is_serving(served)
    # a recorded PID that is now someone else's is never signalled
    other = mirror.ServedMirror(os.getpid(), 1, "127.0.0.1", 1, str(tmp_path))
    assert mirror.stop_mirror(other)


# ------------------------------------------------------------------ host apt sources

ONE_LINE = """\
# comment
deb [arch=amd64 signed-by=/k.gpg] http://archive.example/debian bookworm main contrib
deb http://security.example/debian-security bookworm-security main
"""

DEB822 = """\
Types: deb
URIs: http://archive.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirror_url_from_one_line_sources():
    assert debian_mirror_url({"/etc/apt/sources.list": ONE_LINE}) == \
        "http://archive.example/debian"


def test_mirror_url_from_deb822_sources():
    assert debian_mirror_url({"/etc/apt/sources.list.d/debian.sources": DEB822}) == \
        "http://archive.example/debian"


def test_disabled_and_source_only_entries_are_skipped():
    text = ("Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
            "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n")
    assert debian_mirror_url({"/etc/apt/sources.list.d/x.sources": text}) is None
    assert debian_mirror_url({"/etc/apt/sources.list": ONE_LINE}, suite="trixie") is None
