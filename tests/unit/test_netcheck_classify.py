"""Link classes and TP/PP verdicts."""
import pytest

from clusterctl.netcheck.classify import classify, link_verdict, recommend


@pytest.mark.parametrize("gbps,name", [
    (0.05, "below 1GbE"), (0.5, "below 1GbE"), (0.79, "below 1GbE"),
    (0.958, "1GbE"), (0.94, "1GbE"), (2.5, "1GbE"), (7.9, "1GbE"),
    (9.4, "10GbE"), (13.7, "10GbE"), (19.0, "10GbE"),
    (23.5, "25/100GbE"), (94.0, "25/100GbE"),
])
def test_ethernet_classes(gbps, name):
    assert classify(gbps).name == name


@pytest.mark.parametrize("rate,name", [(56, "IB below EDR"), (100, "IB EDR"), (200, "IB HDR"),
                                       (400, "IB NDR")])
def test_infiniband_classes(rate, name):
    assert classify(rate, "infiniband").name == name


def test_not_measured():
    assert classify(None) is None


def test_thresholds_on_the_class():
    one = classify(0.958)
    assert one.fit_for_any and not one.fit_for_tp     # a 1GbE link is not "below 1 Gbit/s"
    assert not classify(0.3).fit_for_any
    assert classify(9.4).fit_for_tp
    assert "too slow for tensor parallel" in link_verdict(one)
    assert "unfit for any" in link_verdict(classify(0.1))


def test_recommendations():
    assert "pipeline_parallel_size=4" in recommend(classify(9.4), nodes=4, gpus_per_node=8)
    assert "tensor_parallel_size=8" in recommend(classify(9.4), nodes=4, gpus_per_node=8)
    assert "never tensor parallel across nodes" in recommend(classify(0.95), nodes=2)
    assert "fix it" in recommend(classify(0.1), nodes=2)
    assert "also viable" in recommend(classify(200, "infiniband"), nodes=2)
    assert recommend(None, nodes=1).startswith("single node")
