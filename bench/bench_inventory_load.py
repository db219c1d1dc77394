"""Inventory load times at scale, and how fast hostile input is refused.

Prints one line per case: hosts in one group vs each host in its own group (1k, 2k, 10k),
an INI inventory of the same size, and the time to refuse a YAML alias bomb and a deeply
nested document; beside each, the loader as it was before issue #12 (read from git) where
it finishes in reasonable time (it is quadratic at 10k hosts in own groups, and an alias
bomb hangs it). Figures only, no asserts.

    .venv/bin/python bench/bench_inventory_load.py [--baseline-all]
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import types
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


#: the last commit before the issue #12 changes to the loader
BASELINE_REV = "adb3075"


def baseline_loader():
    """load_inventory as it was at BASELINE_REV, or None (no git, no such commit)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        src = subprocess.run(["git", "show", f"{BASELINE_REV}:src/clusterctl/inventory.py"],
                             cwd=repo, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("clusterctl._inventory_baseline")
    module.__package__ = "clusterctl"
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(src, f"inventory.py at {BASELINE_REV}", "exec"), module.__dict__)
    return module.load_inventory


def timed(load, path: Path) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        inv = load(path)
        outcome = f"{len(inv.hosts)} hosts, {len(inv.groups)} groups"
    except InputError as e:
        outcome = "refused: " + str(e).split(": ", 1)[-1][:60]
    return time.perf_counter() - start, outcome


def main() -> int:
    baseline_all = "--baseline-all" in sys.argv[1:]
    cases = []  # (label, file name, text, run the baseline?)
    for n in (1000, 2000, 10000):
        cases += [(f"yaml {n} hosts, one group", "inventory.yaml", yaml_flat(n), True),
                  (f"yaml {n} hosts, own groups", "inventory.yaml", yaml_own_groups(n),
                   n < 10000 or baseline_all),
                  (f"ini  {n} hosts, own groups", "inventory.ini", ini_own_groups(n), False)]
    cases += [("alias bomb (10^9 expanded)", "inventory.yaml", alias_bomb(), False),
              ("nesting 100,000 deep", "inventory.yaml",
               "all:\n  vars:\n    x: " + "[" * 100_000 + "]" * 100_000 + "\n", False)]
    old = baseline_loader()
    print(f"{'case':30} {'now s':>7} {'before s':>9}  outcome now")
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, text, run_old in cases:
            folder = Path(tmp) / str(len(label)) / label.replace(" ", "_").replace(",", "")
            folder.mkdir(parents=True)
            path = folder / name
            path.write_text(text)
            seconds, outcome = timed(load_inventory, path)
            before = "-"
            if old is not None and run_old:
                before = f"{timed(old, path)[0]:.2f}"
            elif old is not None and name.endswith(".yaml") and "hosts" in label:
                before = "skipped"
            elif old is not None and name.endswith(".yaml"):
                before = "hangs"
            print(f"{label:30} {seconds:7.2f} {before:>9}  {outcome}", flush=True)
    print(f"before = the loader at {BASELINE_REV}; '-' = format it did not read; 'skipped' = "
          "quadratic, run with --baseline-all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
