"""`orchard demo`: org and staff, then the generated files through the import pipeline, then the
duplicate scan. Each step is its own transaction (the import commits per batch), and every write is
keyed — org units and staff by code and username, members by identity, orders, refunds and events
by (source, id) — so re-running with the same seed changes nothing."""

from __future__ import annotations

import csv
import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from orchard.db import transaction
from orchard.demo import generate
from orchard.demo.org import DEMO_PASSWORD, ensure_org_and_staff
from orchard.demo.presets import PRESETS, Industry
from orchard.imports import columns
from orchard.imports.readers import FileUnreadable
from orchard.imports.service import ImportResult, run_import
from orchard.members import candidates

SOURCE = "demo"


class Tracker(Protocol):
    """Progress display: `start` opens a step and returns the function that advances it."""

    def start(self, description: str, total: int | None) -> Callable[[int], None]: ...


class _Silent:
    def start(self, description: str, total: int | None) -> Callable[[int], None]:
        return lambda n: None


@dataclass
class DemoResult:
    industry: Industry
    seed: int
    months: int
    directory: Path
    generated: dict[str, int]
    kept_files: bool
    imports: dict[str, ImportResult] = field(default_factory=dict)
    report_rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    new_candidates: int = 0

    def lines(self) -> list[str]:
        start, end = generate.window(self.months)
        kept = "CSV files and error reports" if self.kept_files else "error reports"
        out = [f"演示数据 / demo data: {PRESETS[self.industry].label}, seed {self.seed}, "
               f"{start:%Y-%m-%d} – {end - dt.timedelta(days=1):%Y-%m-%d}; {kept} in {self.directory}"]
        for kind, r in self.imports.items():
            out.append(f"{kind}: {r.rows} 行 rows — 新建 created {r.created}, 更新 updated {r.updated}, "
                       f"未变 unchanged {r.unchanged}, 错误 errors {r.errors}, 警告 warnings {r.warnings}")
            if r.report_path:
                out.append(f"  错误报告 / error report: {r.report_path} ({self.report_rows[kind]} 行 rows)")
        for kind, why in self.skipped.items():
            out.append(f"{kind}: {self.generated[kind]} 行 rows generated, 跳过 / skipped — {why}")
        out.append(f"重复候选 / new merge candidates (same name + birthday): {self.new_candidates}")
        out.append(f"登录 / log in: admin / {DEMO_PASSWORD} (also ops, manager_sh, clerk_sh, clerk_gz, service)")
        return out


def load_demo(*, members: int = 300, seed: int = 7, months: int = 12, industry: str = "retail",
              directory: Path | None = None, keep_files: bool = False, tracker: Tracker | None = None) -> DemoResult:
    """Generate the files into `directory` (default: a new temporary directory, kept because the
    error reports stay there), import them, scan for duplicates. The CSV files are deleted after
    the import unless `keep_files`."""
    tracker = tracker or _Silent()
    industry = Industry(industry)
    with transaction() as session:
        ensure_org_and_staff(session)
        ensure_earning_rules(session)
    directory = directory or Path(tempfile.mkdtemp(prefix="orchard-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    files = generate.write_csvs(directory, members=members, seed=seed, months=months, industry=industry,
                                progress=tracker.start("生成 generate", members))
    result = DemoResult(industry, seed, months, directory, dict(files.rows), keep_files)
    try:
        for kind in generate.KINDS:
            if kind not in columns.KINDS:
                result.skipped[kind] = f"this version cannot import {kind} yet"
                continue
            report = directory / f"{kind}.errors.csv"
            report.unlink(missing_ok=True)  # a previous run's report must not be mistaken for this one's
            try:
                imported = run_import(kind, files.paths[kind], source=SOURCE, report_path=report,
                                      progress=tracker.start(f"导入 import {kind}", files.rows[kind]))
            except FileUnreadable as exc:
                if kind in ("members", "orders"):
                    raise
                result.skipped[kind] = f"the import refused the file: {exc}"
                continue
            result.imports[kind] = imported
            if imported.report_path:
                result.report_rows[kind] = _data_rows(imported.report_path)
    finally:
        if not keep_files:
            for path in files.paths.values():
                path.unlink(missing_ok=True)
    done = tracker.start("查重 duplicate scan", 1)
    with transaction() as session:
        result.new_candidates = candidates.scan_name_birthday(session)
    done(1)
    done = tracker.start("等级 tiers", 1)
    with transaction() as session:
        from orchard.loyalty import tiers

        tiers.evaluate(session, actor="demo")  # place the imported history in the demo's tiers
    done(1)
    with transaction() as session:
        ensure_segments(session)
        from orchard.journeys import ready

        ready.install(session, actor="demo")  # drafts: an operator reviews and publishes them
    from orchard.segments import refresh

    done = tracker.start("刷新 refresh (lifecycle, RFM, tags, segments)", len(refresh.STEPS))
    refresh.run(progress=lambda name, entry: done(1))
    return result


#: The rules a brand starts from, so orders and events sent to the demo earn points at once. The
#: imported history does not earn (imports never do).
DEMO_RULES: tuple[dict, ...] = (
    {"name": "每消费1元积1分", "kind": "amount", "config": {"points": 1, "per_fen": 100}},
    {"name": "周三会员日双倍积分", "kind": "multiplier",
     "config": {"factor": "2", "when": {"type": "member_day", "weekdays": [3]}}},
    {"name": "生日月1.5倍积分", "kind": "multiplier", "config": {"factor": "1.5", "when": {"type": "birthday_month"}}},
    {"name": "注册礼100分", "kind": "event", "config": {"event": "sign_up", "points": 100, "caps": {"lifetime": 100}}},
    {"name": "每日签到5分", "kind": "event", "config": {"event": "check_in", "points": 5, "caps": {"day": 5}}},
)


#: Tiers by spend over a rolling year, so the imported history places members at once.
DEMO_TIERS = {"metric": "spend", "period": "rolling_12m", "downgrade": "one_level", "hold_days": 365, "levels": [
    {"code": "NORMAL", "name": "普通会员", "rank": 0, "threshold": 0},
    {"code": "SILVER", "name": "银卡会员", "rank": 1, "threshold": 100000, "benefits": {"discount_rate": 0.98}},
    {"code": "GOLD", "name": "金卡会员", "rank": 2, "threshold": 500000,
     "benefits": {"discount_rate": 0.95, "free_shipping": True, "birthday_gift": True}},
    {"code": "PLATINUM", "name": "铂金会员", "rank": 3, "threshold": 2000000,
     "benefits": {"discount_rate": 0.9, "free_shipping": True, "birthday_gift": True, "priority_service": True}}]}
DEMO_TASKS = (
    {"code": "profile", "name": "完善个人资料", "kind": "profile", "points": 50},
    {"code": "first_order", "name": "完成首单", "kind": "first_order", "points": 100, "growth": 10},
    {"code": "first_review", "name": "发表首次评价", "kind": "event", "event": "review", "points": 20},
    {"code": "follow_oa", "name": "关注公众号", "kind": "event", "event": "wechat_follow", "points": 30},
)


#: Segments and rule tags an operations team starts from (see docs/segments.md for the language).
DEMO_SEGMENTS: tuple[dict, ...] = (
    {"code": "signed_up_no_order", "name": "注册7天未下单", "definition": {"all": [
        {"field": "order_count", "op": "eq", "value": 0},
        {"field": "joined_at", "op": "older_than_days", "value": 7}]}},
    {"code": "active_30d", "name": "近30天有购买", "definition": {
        "field": "days_since_last_order", "op": "lte", "value": 29}},
    {"code": "sleeping_high_value", "name": "沉睡高价值会员", "definition": {"all": [
        {"field": "total_spend_fen", "op": "gte", "value": 100000},
        {"field": "days_since_last_order", "op": "gte", "value": 90}]}},
    {"code": "browsed_not_bought", "name": "近30天浏览≥3次未购买", "definition": {"all": [
        {"event": "product_viewed", "last_days": 30, "op": "gte", "value": 3},
        {"event": "$order", "last_days": 30, "op": "eq", "value": 0}]}},
    {"code": "birthday_week_sms", "name": "7天内生日且可短信营销", "definition": {"all": [
        {"field": "birthday", "op": "within_next_days", "value": 6}, {"consent": "sms"},
        {"not": {"field": "reduce_disturbance", "op": "eq", "value": True}}]}},
)
DEMO_RULE_TAGS: tuple[dict, ...] = (
    {"name": "高消费", "kind": "value", "definition": {"field": "total_spend_fen", "op": "gte", "value": 500000}},
    {"name": "复购客户", "kind": "behaviour", "definition": {"field": "order_count", "op": "gte", "value": 2}},
)


def ensure_segments(session) -> None:
    """Create the demo's saved segments and rule tags once, without evaluating them: the refresh that
    follows the load computes them with everything else."""
    from sqlalchemy import select

    from orchard.imports.pg_bulk import SYSTEM
    from orchard.members.models import Tag
    from orchard.segments import service as segments
    from orchard.segments import tags
    from orchard.segments.models import Segment

    for body in DEMO_SEGMENTS:
        if session.scalar(select(Segment.id).where(Segment.code == body["code"])) is None:
            segments.create(session, principal=SYSTEM, refresh_now=False, **body)
    for body in DEMO_RULE_TAGS:
        if session.scalar(select(Tag.id).where(Tag.name == body["name"])) is None:
            tags.define(session, principal=SYSTEM, apply_now=False, **body)


def ensure_earning_rules(session) -> None:
    """Create the demo's rules, tiers, check-in ladder and tasks once (a database that already has
    its own keeps them)."""
    from orchard.loyalty import checkin, rulebook, tasks, tiers
    from orchard.loyalty.schemas import RuleIn, TaskIn, TierProgramIn

    if not rulebook.listing(session):
        for body in DEMO_RULES:
            rulebook.create(session, RuleIn.model_validate(body), actor="demo")
    if tiers.program(session) is None:
        tiers.set_program(session, TierProgramIn.model_validate(DEMO_TIERS), actor="demo")
    if session.get(checkin.CheckinProgram, 1) is None:
        checkin.set_program(session, ladder=[{"points": 2}, {"points": 2}, {"points": 5}, {"points": 5},
                                             {"points": 5}, {"points": 5}, {"points": 20, "growth": 5}],
                            cycle=True, makeup_per_month=2, makeup_cost_points=10, actor="demo")
    if not tasks.active(session):
        tasks.set_tasks(session, [TaskIn.model_validate(t) for t in DEMO_TASKS])


def _data_rows(path: Path) -> int:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return max(sum(1 for _ in csv.reader(fh)) - 1, 0)
