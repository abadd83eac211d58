"""Write the shipped catalog for the installed timm: fbt_engine/catalog_data/timm-<version>.json.gz.

Every timm architecture (and the models fbt_engine registers) with family, kind, parameter count,
default input size, pretrained tags and fusability, counted on the meta device (no weights, no
downloads). The output is deterministic: the same timm and fbt_engine give the same bytes.

Run it again when the timm pin moves, an adapter is added or a model is registered
(tests/engine/test_catalog_table.py fails until you do), then commit the new file:

    OMP_NUM_THREADS=1 nice -n 19 python scripts/gen_catalog.py          # all models, a few minutes
    python scripts/gen_catalog.py --limit 20 --out /tmp/t.json.gz       # a quick look at the format
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fbt_engine import catalog  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output file (default: the package's table for this timm)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N models (a format check)")
    args = parser.parse_args(argv)
    ver = catalog.timm_version()
    out = args.out or catalog.table_path(ver)
    start = time.monotonic()
    entries = catalog.build_entries()
    if args.limit:
        entries = entries[:args.limit]

    def progress(i: int, n: int) -> None:
        if i == n or i % 50 == 0:
            print(f"counting {i:,}/{n:,}  ({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)

    catalog.fill_counts(entries, progress, save=None)
    catalog.write_table(entries, out, ver)
    failed = [e.name for e in entries if e.params is not None and e.params < 0]
    print(f"wrote {out} ({out.stat().st_size:,} bytes): {len(entries):,} models for timm {ver}, "
          f"{len(failed)} not countable on meta ({', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}) "
          f"in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
