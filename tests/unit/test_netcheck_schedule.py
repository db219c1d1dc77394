"""The round-robin tournament: every pair once, disjoint rounds, N-1 / N rounds."""
from itertools import combinations

import pytest

from clusterctl.netcheck.schedule import directions, phases, serial, tournament


def names(n):
    return [f"n{i}" for i in range(1, n + 1)]


@pytest.mark.parametrize("n", range(2, 13))
def test_every_pair_exactly_once(n):
    rounds = tournament(names(n))
    met = [frozenset(p) for r in rounds for p in r]
    assert len(met) == len(set(met)) == n * (n - 1) // 2
    assert set(met) == {frozenset(p) for p in combinations(names(n), 2)}


@pytest.mark.parametrize("n", range(2, 13))
def test_round_count_and_disjoint_rounds(n):
    rounds = tournament(names(n))
    assert len(rounds) == (n - 1 if n % 2 == 0 else n)
    for r in rounds:
        busy = [x for p in r for x in p]
        assert len(busy) == len(set(busy)), r          # nobody twice in one round
        assert len(r) == n // 2                        # everyone plays (one rests if odd)


@pytest.mark.parametrize("n", [2, 3, 4, 7, 8])
@pytest.mark.parametrize("bidir", [True, False])
def test_both_directions_once_each(n, bidir):
    ph = phases(tournament(names(n)), bidir=bidir)
    dirs = directions(ph, bidir=bidir)
    assert len(dirs) == len(set(dirs)) == n * (n - 1)
    for p in ph:                                       # one run per node per phase
        busy = [x for pair in p for x in pair]
        assert len(busy) == len(set(busy))
    assert len(ph) == len(tournament(names(n))) * (1 if bidir else 2)


def test_clients_are_spread():
    for n in (4, 5, 8, 9):
        rounds = tournament(names(n))
        clients = [a for r in rounds for a, _ in r]
        counts = {x: clients.count(x) for x in names(n)}
        assert max(counts.values()) - min(counts.values()) <= 1


def test_small_and_duplicate_inputs():
    assert tournament([]) == [] and tournament(["a"]) == []
    assert tournament(["a", "b"]) in ([[("a", "b")]], [[("b", "a")]])
    assert len(tournament(["a", "b", "a", "c"])) == 3     # duplicates ignored


def test_serial_is_one_pair_per_round():
    s = serial(names(5))
    assert len(s) == 10 and all(len(r) == 1 for r in s)


# -- the bidirectional default: N-1 rounds, every pair once, full duplex per slot -------
from hypothesis import given, settings, strategies as st  # noqa: E402


@st.composite
def node_names(draw):
    n = draw(st.integers(min_value=2, max_value=40))
    return draw(st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1,
                                 max_size=8), min_size=n, max_size=n, unique=True))


@settings(max_examples=200, deadline=None)
@given(node_names())
def test_bidir_schedule_property(nodes):
    """Any N in 2..40, any names: every unordered pair exactly once, N-1 phases for even N
    (N for odd), no node twice in a phase, both directions of every pair covered."""
    n = len(nodes)
    ph = phases(tournament(nodes), bidir=True)
    assert len(ph) == (n - 1 if n % 2 == 0 else n)
    met = [frozenset(p) for r in ph for p in r]
    assert len(met) == len(set(met)) == n * (n - 1) // 2
    assert set(met) == {frozenset(p) for p in combinations(nodes, 2)}
    for r in ph:
        busy = [x for p in r for x in p]
        assert len(busy) == len(set(busy)), r
    dirs = directions(ph, bidir=True)
    assert set(dirs) == {(a, b) for a in nodes for b in nodes if a != b}


@pytest.mark.parametrize("n", range(2, 41))
def test_bidir_takes_half_the_phases_of_one_direction(n):
    rounds = tournament(names(n))
    one_way = phases(rounds, bidir=False)
    both = phases(rounds, bidir=True)
    assert len(both) == (n - 1 if n % 2 == 0 else n)
    assert len(one_way) == 2 * len(both)
    assert sorted(directions(one_way, bidir=False)) == sorted(directions(both, bidir=True))
