"""Inventory load times at scale, and how fast hostile input is refused.

Prints one line per case: hosts in one group vs each host in its own group (1k, 2k, 10k),
an INI inventory of the same size, and the time to refuse a YAML alias bomb and a deeply
nested document. Figures only, no asserts. Run: .venv/bin/python bench/bench_inventory_load.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from clusterctl.errors import InputError
from clusterctl.inventory import load_inventory


def yaml_flat(n: int) -> str:
    lines = ["all:", "  hosts:"]
    lines += [f"    n{i}: {{ansible_host: 10.{i // 65536}.{i // 256 % 256}.{i % 256}"
              + (", role: head}" if i == 0 else "}") for i in range(n)]
    return "\n".join(lines) + "\n"


def yaml_own_groups(n: int) -> str:
    lines = ["all:", "  children:"]
    for i in range(n):
        lines += [f"    g{i}:", "      hosts:",
                  f"        n{i}: {{ansible_host: 10.{i // 65536}.{i // 256 % 256}.{i % 256}"
                  + (", role: head}" if i == 0 else "}")]
    return "\n".join(lines) + "\n"


def ini_own_groups(n: int) -> str:
    lines = []
    for i in range(n):
        lines += [f"[g{i}]", f"n{i} ansible_host=10.{i // 65536}.{i // 256 % 256}.{i % 256}"
                  + (" role=head" if i == 0 else "")]
    return "\n".join(lines) + "\n"


def alias_bomb() -> str:
    lines = ["all:", "  vars:", "    x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"    x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines += ["  hosts: {n1: {role: head}}"]
    return "\n".join(lines) + "\n"


def timed(path: Path) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        inv = load_inventory(path)
        outcome = f"{len(inv.hosts)} hosts, {len(inv.groups)} groups"
    except InputError as e:
        outcome = "refused: " + str(e).split(": ", 1)[-1][:70]
    return time.perf_counter() - start, outcome


def main() -> int:
    cases = []
    for n in (1000, 2000, 10000):
        cases += [(f"yaml {n} hosts, one group", "inventory.yaml", yaml_flat(n)),
                  (f"yaml {n} hosts, own groups", "inventory.yaml", yaml_own_groups(n)),
                  (f"ini  {n} hosts, own groups", "inventory.ini", ini_own_groups(n))]
    cases += [("alias bomb (10^9 expanded)", "inventory.yaml", alias_bomb()),
              ("nesting 100,000 deep", "inventory.yaml",
               "all:\n  vars:\n    x: " + "[" * 100_000 + "]" * 100_000 + "\n")]
    print(f"{'case':34} {'seconds':>8}  outcome")
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, text in cases:
            folder = Path(tmp) / str(len(label)) / label.replace(" ", "_").replace(",", "")
            folder.mkdir(parents=True)
            path = folder / name
            path.write_text(text)
            seconds, outcome = timed(path)
            print(f"{label:34} {seconds:8.2f}  {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
