"""Check that two versions of `tiers.evaluate` give the same tiers: each version seeds its own database
the same way (bench/tiers_evaluate.py's seed and program), runs the bench's three passes — placing
everyone, nothing changing, downgrades after a quarter of the growth is reversed — at fixed instants, in
a child process with its own source tree first on PYTHONPATH; then every `member_tiers` row and every
`tier_changes` row are compared. Not a benchmark; exits 1 on any difference.

    .venv/bin/python bench/tiers_compare.py --members 200000 --before /work/wt-base/src --after src
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import subprocess
import sys

from points_seed import create_database, drop_database
from sqlalchemy import create_engine, text
from tiers_evaluate import PROGRAM, seed

RUN = ("import datetime as dt, sys; from orchard import db; from orchard.loyalty.tiers import evaluate; "
       "s = db.new_session(); print(evaluate(s, now=dt.datetime.fromisoformat(sys.argv[1]))); s.commit()")
QUERIES = {
    "member_tiers": "SELECT member_id, level_id, since, keep_until, metric_value, evaluated_at, override_level_id "
                    "FROM member_tiers ORDER BY member_id",
    "tier_changes": "SELECT member_id, from_level_id, to_level_id, reason, metric_value, actor, at FROM tier_changes "
                    "ORDER BY member_id, at, reason",
    "audit": "SELECT action, entity_id, at FROM audit_log WHERE action LIKE 'tier.%' ORDER BY entity_id, at",
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
    ap.add_argument("--members", type=int, default=20000)
    ap.add_argument("--before", required=True, help="the src directory of the version before")
    ap.add_argument("--after", required=True, help="the src directory of the version after")
    args = ap.parse_args()
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    results = {}
    for label, src in (("before", args.before), ("after", args.after)):
        name, url, env = create_database()
        try:
            env = {**env, "PYTHONPATH": os.path.abspath(src)}
            seed(url, args.members, 0.6)
            engine = create_engine(url)
            with engine.begin() as c:
                c.execute(text("INSERT INTO tier_program (id, metric, period, downgrade, hold_days, weights, "
                               "updated_by, updated_at) VALUES (1, 'growth', 'rolling_12m', 'one_level', 0, '{}', "
                               "'bench', now())"))
                for lv in PROGRAM["levels"]:
                    c.execute(text("INSERT INTO tier_levels (code, name, rank, threshold, benefits, active) VALUES "
                                   "(:code, :name, :rank, :threshold, '{}', true)"), lv)
            outs = []
            for i in range(3):
                if i == 2:
                    with engine.begin() as c:
                        c.execute(text(
                            "INSERT INTO growth_entries (member_id, kind, amount, source, reason, actor, explanation, "
                            "occurred_at, created_at) SELECT member_id, 'reverse', -amount, 'bench', '退款', 'bench', "
                            "'{}', occurred_at, now() FROM growth_entries WHERE member_id % 4 = 0"))
                now = (t0 + dt.timedelta(hours=i)).isoformat()
                outs.append(subprocess.run([sys.executable, "-c", RUN, now], env=env, check=True, text=True,
                                           capture_output=True).stdout.strip())
            engine.dispose()
            results[label] = digest(url)
            print(f"{label} ({src}):", *outs, sep="\n  ")
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
