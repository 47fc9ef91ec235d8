"""Check that two versions of the expiry pass give the same ledger: each runs (`expire_due` at one fixed
instant, in a child process with its own source tree first on PYTHONPATH) on its own copy of one seeded
template database (bench/points_expiry.py --template NAME --keep seeds one), then every expire entry,
every lot's remaining/expired/expire_entry_id, every balance and the audit rows are compared. Not a
benchmark; prints a verdict and exits 1 on any difference.

    .venv/bin/python bench/expiry_compare.py --template orchard_bench_expiry2_t2m \\
        --before /work/wt-base/src --after src
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import subprocess
import sys

from points_seed import clone_database, drop_database, orchard
from sqlalchemy import create_engine, text

RUN = ("import datetime as dt, sys; from orchard import db; from orchard.loyalty.expiry import expire_due; "
       "s = db.new_session(); r = expire_due(s, now=dt.datetime.fromisoformat(sys.argv[1])); s.commit(); print(r)")
#: What the pass writes, each as one ordered query whose rows are hashed.
QUERIES = {
    "expire entries": "SELECT id, member_id, kind, amount, balance_after, reason, source, external_id, actor, "
                      "created_at FROM points_entries WHERE kind = 'expire' ORDER BY id",
    "lots": "SELECT id, remaining, expired, expire_entry_id FROM points_lots ORDER BY id",
    "accounts": "SELECT member_id, balance, debt FROM points_accounts ORDER BY member_id",
    "allocations": "SELECT entry_id, lot_id, amount FROM points_allocations ORDER BY id",
    "audit": "SELECT actor, action, entity, entity_id FROM audit_log WHERE action = 'points.expire' ORDER BY entity_id",
    "expired per member": "SELECT member_id, sum(expired), count(*) FILTER (WHERE expired > 0) FROM points_lots "
                          "GROUP BY member_id ORDER BY member_id",
}


def digest(url: str) -> dict[str, tuple[int, str]]:
    engine = create_engine(url)
    out = {}
    with engine.connect() as c:
        for name, sql in QUERIES.items():
            h, n = hashlib.sha256(), 0
            for row in c.execute(text(sql)).yield_per(100_000):
                h.update(repr(tuple(row)).encode())
                n += 1
            out[name] = (n, h.hexdigest()[:16])
    engine.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--template", required=True)
    ap.add_argument("--before", required=True, help="the src directory of the version before")
    ap.add_argument("--after", required=True, help="the src directory of the version after")
    ap.add_argument("--now", default=None, help="the pass's instant (default: now, the same for both)")
    args = ap.parse_args()
    now = args.now or dt.datetime.now(dt.UTC).isoformat()
    results = {}
    for label, src in (("before", args.before), ("after", args.after)):
        name, url, env = clone_database(args.template)
        try:
            env = {**env, "PYTHONPATH": os.path.abspath(src)}
            orchard(env, "db", "upgrade")
            out = subprocess.run([sys.executable, "-c", RUN, now], env=env, check=True, text=True,
                                 capture_output=True).stdout.strip()
            results[label] = digest(url)
            print(f"{label} ({src}): {out}")
        finally:
            drop_database(name)
    same = results["before"] == results["after"]
    for name in QUERIES:
        b, a = results["before"][name], results["after"][name]
        print(f"  {name}: {b[0]:,} rows {b[1]} / {a[0]:,} rows {a[1]}  {'same' if a == b else 'DIFFERENT'}")
    print("identical" if same else "DIFFERENT")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
