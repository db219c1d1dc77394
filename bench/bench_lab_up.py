"""Wall time of `clusterctl lab up --nodes 4` with a cached image and mirror, and of
`lab down`. Prints figures; asserts nothing. Run as root:

    python bench/bench_lab_up.py [--nodes 4] [--runs 3] [--no-mirror] [--name benchlab]

The first run also builds the image and the mirror when they are not cached yet; that run
is reported separately ("cold").
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clusterctl import lab  # noqa: E402
from clusterctl.lab import image  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--name", default="benchlab")
    ap.add_argument("--link", default="10gbit")
    ap.add_argument("--no-mirror", action="store_true")
    args = ap.parse_args()
    mirror = not args.no_mirror

    lab.down(args.name, log=lambda m: None)
    if not image.image_ready():
        t0 = time.monotonic()
        image.ensure_image()
        print(f"cold: node image built in {time.monotonic() - t0:.1f}s")
    ups, downs = [], []
    for run in range(args.runs):
        t0 = time.monotonic()
        state = lab.up(args.name, nodes=args.nodes, link=args.link, mirror=mirror,
                       log=lambda m: None)
        t_up = time.monotonic() - t0
        t0 = time.monotonic()
        lab.down(args.name, log=lambda m: None)
        t_down = time.monotonic() - t0
        print(f"run {run + 1}: lab up --nodes {args.nodes} {t_up:.2f}s "
              f"(mirror {'on' if state.mirror else 'off'}), lab down {t_down:.2f}s")
        ups.append(t_up)
        downs.append(t_down)
    print(f"lab up --nodes {args.nodes} (cached image{', cached mirror' if mirror else ''}): "
          f"median {statistics.median(ups):.2f}s, min {min(ups):.2f}s, max {max(ups):.2f}s")
    print(f"lab down: median {statistics.median(downs):.2f}s, max {max(downs):.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
