"""Who measures whom, and when: a round-robin tournament over the nodes (pure).

Every unordered pair of nodes meets exactly once. The circle method fixes one
node and rotates the others one seat per round; each round pairs seat i with
seat n-1-i, so no node is in two pairs of the same round. With an odd number of
nodes a "bye" seat is added and whoever sits opposite it rests that round.

    even N: N-1 rounds of N/2 pairs       odd N: N rounds of (N-1)/2 pairs

A node runs at most one iperf3 client and serves at most one iperf3 client per
phase, so the measurements of one phase never share a NIC. By default a phase is a
round and each pair runs full duplex (iperf3 --bidir: both directions at once), so
all pairs of N nodes take N-1 phases (N for odd N); one direction at a time splits
every round in two halves, 2(N-1) phases.
"""
from __future__ import annotations

from typing import Sequence

Pair = tuple[str, str]


def tournament(nodes: Sequence[str]) -> list[list[Pair]]:
    """Rounds of disjoint pairs; every unordered pair appears in exactly one round.

    In each pair the first node is the iperf3 client, the second the server; every
    node is the client in about half of its pairs.
    """
    seats: list[str | None] = list(dict.fromkeys(nodes))  # unique, in order
    if len(seats) < 2:
        return []
    if len(seats) % 2:
        seats.append(None)  # the bye
    n = len(seats)
    rounds: list[list[Pair]] = []
    for r in range(n - 1):
        pairs: list[Pair] = []
        for i in range(n // 2):
            a, b = seats[i], seats[n - 1 - i]
            if a is None or b is None:
                continue
            if i == 0 and r % 2:
                a, b = b, a      # the fixed seat alternates; the others rotate through
                #                  both halves, so every node is client about half the time
            pairs.append((a, b))
        rounds.append(pairs)
        # rotate every seat but the first one step clockwise
        seats = [seats[0], seats[-1], *seats[1:-1]]
    return rounds


def serial(nodes: Sequence[str]) -> list[list[Pair]]:
    """One pair per round: the N*(N-1)/2 runs a naive loop would do (for comparison)."""
    order = list(dict.fromkeys(nodes))
    return [[(a, b)] for i, a in enumerate(order) for b in order[i + 1:]]


def phases(rounds: list[list[Pair]], *, bidir: bool) -> list[list[Pair]]:
    """Turn rounds of pairs into phases of directed client->server runs.

    With iperf3 --bidir one run measures both directions, so a phase is a round.
    Without it each round becomes two halves: a->b, then b->a. In both halves
    every node is in at most one run, so each server has at most one client.
    """
    if bidir:
        return [list(r) for r in rounds]
    out: list[list[Pair]] = []
    for r in rounds:
        out.append(list(r))
        out.append([(b, a) for a, b in r])
    return out


def directions(phase_list: list[list[Pair]], *, bidir: bool) -> list[Pair]:
    """Every directed link the phases measure (for checks and tests)."""
    out: list[Pair] = []
    for ph in phase_list:
        for a, b in ph:
            out.append((a, b))
            if bidir:
                out.append((b, a))
    return out
