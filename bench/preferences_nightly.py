"""The preference step alone on a kept, already refreshed database: one more night of orders, then the
incremental pass (committed) and the same pass recomputing everyone (rolled back) at the same state.

    .venv/bin/python bench/preferences_nightly.py --database orchard_seg_prefs --days-later 2 --new-orders 13700

`--days-later` counts from the segments bench's seed time (`segments_refresh.NOW`); it must be later
than the database's last refresh.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import points_seed  # noqa: E402
import segments_refresh  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database", required=True)
    ap.add_argument("--days-later", type=int, required=True)
    ap.add_argument("--new-orders", type=int, default=13_700)
    args = ap.parse_args()
    url = points_seed.PG.rsplit("/", 1)[0] + "/" + args.database
    os.environ["ORCHARD_DATABASE_URL"] = url
    from orchard import db
    from orchard.scoring import preferences

    db.reset_caches()
    now = segments_refresh.NOW + dt.timedelta(days=args.days_later)
    if args.new_orders:
        segments_refresh.add_day_of_orders(url, now, args.new_orders)
    with db.transaction() as s:
        t = time.perf_counter()
        r = preferences.refresh(s, now=now)
        print(f"preferences, incremental: {time.perf_counter() - t:.1f} s, {r['members']:,} members recomputed "
              f"(full: {r['full']}), +{r['added']:,} −{r['removed']:,} (load {points_seed.loadavg()})")
    segments_refresh.compare_prefs(now)


if __name__ == "__main__":
    main()
