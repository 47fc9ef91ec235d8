"""The `orchard` command. Each command is one transaction (committed on success)."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from orchard import migrate
from orchard.errors import OrchardError

app = typer.Typer(help="Orchard 会员运营 CRM", no_args_is_help=True)
db_app = typer.Typer(help="数据库 / database", no_args_is_help=True)
users_app = typer.Typer(help="员工账号 / staff accounts", no_args_is_help=True)
keys_app = typer.Typer(help="API 密钥 / API keys", no_args_is_help=True)
members_app = typer.Typer(help="会员 / members", no_args_is_help=True)
org_app = typer.Typer(help="组织 / org units", no_args_is_help=True)
for sub, name in ((db_app, "db"), (users_app, "users"), (keys_app, "apikeys"), (members_app, "members"),
                  (org_app, "org")):
    app.add_typer(sub, name=name)
console = Console()
err = Console(stderr=True)


def _fail(exc: OrchardError) -> None:
    err.print(f"[red]错误 / error:[/red] {exc.detail}")
    raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations (the schema comes only from them)."""
    migrate.upgrade(revision=revision)
    console.print("数据库已是最新 / database is up to date")


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    migrate.downgrade(revision=revision)


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          scheduler: Annotated[bool, typer.Option(help="run the periodic jobs in this server")] = True,
          http: Annotated[str, typer.Option(help="uvicorn's HTTP parser: auto (httptools when installed) or h11")]
          = "auto",
          loop: Annotated[str, typer.Option(help="uvicorn's event loop: auto (uvloop when installed) or asyncio")]
          = "auto") -> None:
    """Serve the API (and docs at /docs), with the scheduler of periodic jobs (segment sweeps every
    10 s, due segment refreshes, nightly `orchard refresh`, points and coupon expiry, tiers)."""
    import uvicorn

    from orchard.config import get_settings

    os.environ["ORCHARD_SCHEDULER"] = "true" if scheduler else "false"
    get_settings.cache_clear()
    uvicorn.run("orchard.app:create_app", factory=True, host=host, port=port, workers=workers, http=http, loop=loop)


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Option()],
    role: Annotated[str, typer.Option(help="admin, hq_ops, store_manager, clerk, service, integrator")],
    store: Annotated[list[str] | None, typer.Option(help="store or region code (repeatable)")] = None,
    display_name: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a staff account; the password is read from standard input."""
    from orchard.auth import service
    from orchard.db import transaction

    password = sys.stdin.readline().rstrip("\r\n")
    try:
        with transaction() as session:
            staff = service.create_staff(session, username=username, password=password, role=role,
                                         store_codes=store or [], display_name=display_name, actor="cli")
            console.print(f"已创建员工 / created staff {staff.username} (id {staff.id}, role {staff.role})")
    except OrchardError as exc:
        _fail(exc)


@keys_app.command("create")
def apikeys_create(name: Annotated[str, typer.Option()], role: str = "integrator",
                   store: Annotated[str | None, typer.Option(help="bind the key to one store")] = None) -> None:
    """Create an API key. The key is printed once, alone on the last line."""
    from orchard.auth import service
    from orchard.db import transaction

    try:
        with transaction() as session:
            key, secret = service.create_api_key(session, name=name, role=role, store_code=store, actor="cli")
            console.print(f"API 密钥已创建，仅显示一次 / key {key.id} ({key.role}) created; it is shown only once:")
    except OrchardError as exc:
        _fail(exc)
    print(secret)


@org_app.command("add")
def org_add(kind: str, code: str, name: str, parent: Annotated[str | None, typer.Option()] = None,
            city: Annotated[str | None, typer.Option()] = None) -> None:
    """Add an HQ, region or store."""
    from orchard.db import transaction
    from orchard.org import service

    try:
        with transaction() as session:
            unit = service.create_unit(session, kind=kind, code=code, name=name, parent_code=parent, city=city)
            console.print(f"已创建 / created {unit.kind} {unit.code} (id {unit.id})")
    except OrchardError as exc:
        _fail(exc)


@members_app.command("show")
def members_show(member_id: Annotated[int | None, typer.Argument()] = None,
                 phone: Annotated[str | None, typer.Option()] = None) -> None:
    """Show a member (by id or phone) as JSON, unmasked: the CLI is an operator's tool."""
    from orchard.auth.roles import Role
    from orchard.auth.service import Principal
    from orchard.db import transaction
    from orchard.members import service

    system = Principal("system", 0, "cli", Role.admin, None, False)
    try:
        with transaction() as session:
            if phone is not None:
                items, _ = service.list_members(session, principal=system, phone=phone, limit=1)
                if not items:
                    err.print("未找到 / not found")
                    raise typer.Exit(1)
                read = items[0]
            elif member_id is not None:
                read = service.read_one(session, system, member_id)
            else:
                err.print("给出会员 id 或 --phone / give a member id or --phone")
                raise typer.Exit(2)
    except OrchardError as exc:
        _fail(exc)
    console.print_json(json.dumps(read.model_dump(mode="json"), ensure_ascii=False))


@members_app.command("scan-duplicates")
def members_scan_duplicates() -> None:
    """Record merge candidates for members sharing name and birthday (one SQL statement)."""
    from orchard.db import transaction
    from orchard.members import candidates

    with transaction() as session:
        n = candidates.scan_name_birthday(session)
    console.print(f"新增候选 / new candidates: {n}")


@app.command()
def demo(
    members: Annotated[int, typer.Option(min=0, max=20_000_000, help="members to generate (streamed)")] = 300,
    seed: int = 7,
    months: Annotated[int, typer.Option(min=1, max=120, help="months of history, ending 2026-10-31")] = 12,
    industry: Annotated[str, typer.Option(help="retail | ecommerce | restaurant | gym | education | hotel")] = "retail",
    directory: Annotated[Path | None, typer.Option("--dir", help="where the CSV files and error reports go "
                                                                "(default: a new temporary directory)")] = None,
    keep_files: Annotated[bool, typer.Option(help="keep the generated CSV files after the import")] = False,
) -> None:
    """Load a deterministic zh-CN demo data set (org, staff, members, orders, refunds, events) through the
    import pipeline, with some dirty rows on purpose. The same seed gives the same data; safe to re-run."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from orchard.demo.load import load_demo
    from orchard.demo.presets import Industry

    if industry not in Industry.__members__:
        err.print(f"[red]未知行业 / unknown industry {industry!r}:[/red] use one of {', '.join(Industry)}")
        raise typer.Exit(2)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err) as bar:

        class Bars:
            def start(self, description: str, total: int | None):
                task = bar.add_task(description, total=total)
                return lambda n: bar.advance(task, n)

        result = load_demo(members=members, seed=seed, months=months, industry=industry, directory=directory,
                           keep_files=keep_files, tracker=Bars())
    for line in result.lines():
        console.print(line, highlight=False)



import_app = typer.Typer(help="导入 / import CSV or XLSX (UTF-8, UTF-8 with BOM, GB18030)", no_args_is_help=True)
app.add_typer(import_app, name="import")


def _run_import(kind: str, file: Path, source: str, report: Path | None, batch_size: int | None,
                earn: bool = False) -> None:
    """Per-row problems go to the error report; the exit code is non-zero only when the file
    itself cannot be read."""
    from rich.progress import Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from orchard.imports.readers import FileUnreadable
    from orchard.imports.service import run_import

    class RowsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed or 0:,.0f} 行/s rows/s")

    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,} 行 rows"),
                      RowsPerSecond(), TimeElapsedColumn(), console=err, transient=False) as bar:
            task = bar.add_task(f"导入 import {kind}", total=None)
            result = run_import(kind, file, source=source, report_path=report, batch_size=batch_size,
                                progress=lambda n: bar.advance(task, n), earn=earn)
    except FileUnreadable as exc:
        err.print(f"[red]无法读取文件 / cannot read the file:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"{kind}: {result.rows} 行 rows — 新建 created {result.created}, 更新 updated {result.updated}, "
                  f"未变 unchanged {result.unchanged}, 错误 errors {result.errors}, 警告 warnings {result.warnings}",
                  soft_wrap=True)  # one line each, whatever the width: scripts read the report path from here
    if result.unknown_columns:
        console.print(f"未识别的列（已忽略） / ignored columns: {', '.join(result.unknown_columns)}", soft_wrap=True,
                      markup=False)  # header text and paths come from the file: "[x]" is not Rich markup
    if result.report_path:
        console.print(f"错误报告 / error report: {result.report_path}", soft_wrap=True, markup=False)


@import_app.command("orders")
def import_orders(file: Path, source: str = "import", report: Annotated[Path | None, typer.Option()] = None,
                  batch_size: Annotated[int | None, typer.Option(min=1)] = None,
                  earn: Annotated[bool, typer.Option(
                      "--earn", help="订单按积分规则积分 / the orders this import creates earn points, growth value "
                                     "and tier upgrades as if sent to the API (a POS's nightly file); without it an "
                                     "import loads history and earns nothing")] = False) -> None:
    """Import orders: order_id, member_phone | member_external_id | member_card_no, paid_at, amount | amount_fen,
    store_code, channel, and per line sku, product_name, category, quantity, unit_price, line_amount, line_no: one row
    per order line, consecutive rows of an order id forming one order (订单号, 手机号, 金额, 单价, 行金额 … work)."""
    _run_import("orders", file, source, report, batch_size, earn)


@import_app.command("members")
def import_members(file: Path, source: str = "import", report: Annotated[Path | None, typer.Option()] = None,
                   batch_size: Annotated[int | None, typer.Option(min=1)] = None) -> None:
    """Import members: phone | external_id | card_no | email | wechat ids, name, gender, birthday, region,
    store_code, joined_at, source_channel (姓名, 手机号, 性别, 生日, 门店编码 … work)."""
    _run_import("members", file, source, report, batch_size)


@import_app.command("refunds")
def import_refunds(file: Path, source: str = "import", report: Annotated[Path | None, typer.Option()] = None,
                   batch_size: Annotated[int | None, typer.Option(min=1)] = None) -> None:
    """Import refunds: refund_id, order_id, refunded_at, amount | amount_fen (neither: full refund), sku and
    quantity (a line refund), reason (退款单号, 原订单号, 退款时间, 退款金额 … work). The order is looked up under
    the same --source; a refund whose order is not imported yet is kept pending until it is."""
    _run_import("refunds", file, source, report, batch_size)


@import_app.command("events")
def import_events(file: Path, source: str = "import", report: Annotated[Path | None, typer.Option()] = None,
                  batch_size: Annotated[int | None, typer.Option(min=1)] = None) -> None:
    """Import behaviour events: event_id, name (login, store_visit … or 登录, 到店 …), member_phone |
    member_external_id | member_card_no, occurred_at, store_code, category, sku, product_name, properties
    (a JSON object) (事件ID, 事件, 手机号, 发生时间 … work)."""
    _run_import("events", file, source, report, batch_size)


@import_app.command("tags")
def import_tags(file: Path, source: str = "import", report: Annotated[Path | None, typer.Option()] = None,
                batch_size: Annotated[int | None, typer.Option(min=1)] = None) -> None:
    """Import member tags: member_phone | member_external_id | member_card_no and tags (one or more names separated
    by , ， ; | 、) (手机号, 会员ID, 标签 … work). Members must exist; a new tag name is created (source import) and
    reported as a warning; imported tags are never removed by a rule refresh."""
    _run_import("tags", file, source, report, batch_size)


# ---- export -------------------------------------------------------------------------------------

export_app = typer.Typer(help="导出 / export members, orders, events as CSV or XLSX", no_args_is_help=True)
app.add_typer(export_app, name="export")
ExportFormat = Annotated[str, typer.Option("--format", help="csv (UTF-8 with BOM) or xlsx")]
ExportOut = Annotated[Path, typer.Option("--out", help="file to write (replaced only when complete)")]
ExportFields = Annotated[str | None, typer.Option(help="comma-separated field keys, in output order")]
ExportLang = Annotated[str, typer.Option(help="header language: zh or en")]
When = Annotated[str | None, typer.Option(help="ISO date or date-time; without a zone, the tenant's zone")]


def _when(value: str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"not an ISO date or date-time: {value!r}", param_hint=f"--{name}") from None


def _export(kind: str, fmt: str, out: Path, fields: str | None, lang: str, filters: object) -> None:
    """Run an export as an unscoped, unmasked operator (like `members show`); the audit row
    (actor "cli") commits before the file is written, as over HTTP."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from orchard.auth.roles import Role
    from orchard.auth.service import Principal
    from orchard.db import transaction
    from orchard.exports import service

    class RowsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.completed / task.elapsed if task.elapsed else 0:,.0f} rows/s")

    if fmt not in ("csv", "xlsx"):
        raise typer.BadParameter("csv or xlsx", param_hint="--format")
    if lang not in ("zh", "en"):
        raise typer.BadParameter("zh or en", param_hint="--lang")
    plan_fn = {"members": service.plan_members, "orders": service.plan_orders, "events": service.plan_events}[kind]
    system = Principal("system", 0, "cli", Role.admin, None, False)
    try:
        with transaction() as session:
            plan = plan_fn(session, principal=system, fmt=fmt, fields=fields, english=lang == "en",
                           filters=filters, actor="cli")
            total = service.count(session, plan)
    except OrchardError as exc:
        _fail(exc)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RowsPerSecond(),
                  TimeElapsedColumn(), console=err) as progress:
        task = progress.add_task(f"导出 / exporting {kind}", total=total)
        n = service.write_file(plan, out, on_rows=lambda k: progress.advance(task, k))
    console.print(f"已导出 / exported {n} rows → {out}")


@export_app.command("members")
def export_members(out: ExportOut, fmt: ExportFormat = "csv", fields: ExportFields = None, lang: ExportLang = "zh",
                   phone: Annotated[str | None, typer.Option()] = None,
                   identity: Annotated[str | None, typer.Option(help="kind:value, e.g. card_no:A001")] = None,
                   store: Annotated[str | None, typer.Option(help="store or region code")] = None,
                   tag: Annotated[str | None, typer.Option()] = None,
                   consent: Annotated[str | None, typer.Option(help="channel:purpose, e.g. sms:marketing")] = None,
                   joined_from: When = None, joined_to: When = None,
                   q: Annotated[str | None, typer.Option(help="name contains")] = None) -> None:
    """Export members (the same filters as GET /api/v1/members)."""
    from orchard.exports.service import MemberFilters

    _export("members", fmt, out, fields, lang, MemberFilters(
        phone=phone, identity=identity, store=store, tag=tag, consent=consent,
        joined_from=_when(joined_from, "joined-from"), joined_to=_when(joined_to, "joined-to"), q=q))


@export_app.command("orders")
def export_orders(out: ExportOut, fmt: ExportFormat = "csv", fields: ExportFields = None, lang: ExportLang = "zh",
                  paid_from: When = None, paid_to: When = None,
                  store: Annotated[str | None, typer.Option(help="store or region code")] = None) -> None:
    """Export orders: one row per order line when a line field is chosen (the default)."""
    from orchard.exports.service import OrderFilters

    _export("orders", fmt, out, fields, lang, OrderFilters(
        paid_from=_when(paid_from, "paid-from"), paid_to=_when(paid_to, "paid-to"), store=store))


@export_app.command("events")
def export_events(out: ExportOut, fmt: ExportFormat = "csv", fields: ExportFields = None, lang: ExportLang = "zh",
                  name: Annotated[str | None, typer.Option(help="event name")] = None,
                  occurred_from: When = None, occurred_to: When = None,
                  store: Annotated[str | None, typer.Option(help="store or region code")] = None) -> None:
    """Export behaviour events."""
    from orchard.exports.service import EventFilters

    _export("events", fmt, out, fields, lang, EventFilters(
        name=name, occurred_from=_when(occurred_from, "occurred-from"),
        occurred_to=_when(occurred_to, "occurred-to"), store=store))



# ---- points -------------------------------------------------------------------------------------

points_app = typer.Typer(help="积分 / the points ledger", no_args_is_help=True)
app.add_typer(points_app, name="points")


@points_app.command("verify")
def points_verify() -> None:
    """Check every ledger invariant over the whole ledger; exit 1 on any violation."""
    from rich.table import Table

    from orchard.db import transaction
    from orchard.loyalty.verify import verify

    with transaction(readonly=True) as session:
        checks = verify(session)
    table = Table("检查 check", "规则 rule", "违反 violations")
    for c in checks:
        table.add_row(c.name, c.rule, f"[red]{c.violations}[/red]" if c.violations else "0")
    console.print(table)
    bad = sum(c.violations for c in checks)
    if bad:
        console.print(f"[red]账本不一致 / ledger inconsistent: {bad} violations[/red]")
        raise typer.Exit(1)
    console.print("账本一致 / ledger consistent")


@points_app.command("expire")
def points_expire() -> None:
    """Expire every lot past its expiry in one set-based pass (schedule it daily; re-running is a no-op)."""
    from orchard.db import transaction
    from orchard.loyalty.expiry import expire_due

    with transaction() as session:
        r = expire_due(session)
    console.print(f"过期 expired {r.points:,} 积分 points in {r.lots:,} lots of {r.members:,} members")


@points_app.command("liability")
def points_liability(first: Annotated[str, typer.Option("--from", help="YYYY-MM (tenant zone)")],
                     last: Annotated[str, typer.Option("--to", help="YYYY-MM, inclusive")]) -> None:
    """Points liability by month and issuing store: issued, spent, expired, reversed, adjusted out,
    outstanding at month end."""
    from rich.table import Table
    from sqlalchemy import select

    from orchard.db import transaction
    from orchard.loyalty import reports
    from orchard.org.models import OrgUnit

    with transaction(readonly=True) as session:
        try:
            rows = reports.liability(session, first, last)
        except ValueError as exc:
            console.print(f"[red]{exc}[/red] (months as YYYY-MM)")
            raise typer.Exit(2) from None
        codes = dict(session.execute(select(OrgUnit.id, OrgUnit.code)).all())
    table = Table("月份 month", "门店 store", "发放 issued", "使用 spent", "过期 expired", "退款扣回 reversed",
                  "调减 adjusted", "余额 outstanding")
    for r in rows:
        table.add_row(r.month, codes.get(r.store_id, "-"), *(f"{n:,}" for n in (
            r.issued, r.spent, r.expired, r.reversed, r.adjusted_out, r.outstanding)))
    console.print(table)


@points_app.command("anomalies")
def points_anomalies(day: Annotated[str | None, typer.Option(help="YYYY-MM-DD (tenant zone); default yesterday")]
                     = None, factor: int = 10, min_points: int = 1000, burst_orders: int = 10) -> None:
    """Flag the day's earning spikes and order bursts for review (schedule daily; re-running adds nothing)."""
    from orchard.db import transaction
    from orchard.kit.clock import tenant_zone, utcnow
    from orchard.loyalty import anomalies

    try:
        when = dt.date.fromisoformat(day) if day else utcnow().astimezone(tenant_zone()).date() - dt.timedelta(days=1)
    except ValueError:
        console.print(f"[red]not a date: {day}[/red] (YYYY-MM-DD)")
        raise typer.Exit(2) from None
    with transaction() as session:
        r = anomalies.scan(session, when, factor=factor, min_points=min_points, burst_orders=burst_orders)
    console.print(f"{r.day}: 会员积分异常 member spikes {r.member_spikes}, 门店积分异常 store spikes {r.store_spikes}, "
                  f"同店频繁下单 order bursts {r.order_bursts}")


rules_app = typer.Typer(help="积分规则 / earning rules", no_args_is_help=True)
points_app.add_typer(rules_app, name="rules")


@rules_app.command("list")
def rules_list() -> None:
    """Every earning rule, by kind and priority."""
    from rich.table import Table

    from orchard.db import transaction
    from orchard.loyalty import rulebook

    table = Table("id", "名称 name", "类型 kind", "目标 target", "状态 status", "优先级 priority", "配置 config")
    with transaction(readonly=True) as session:
        for r in rulebook.listing(session):
            table.add_row(str(r.id), r.name, r.kind, r.target, r.status, str(r.priority),
                          json.dumps(r.config, ensure_ascii=False))
    console.print(table)


@rules_app.command("load")
def rules_load(path: Annotated[Path, typer.Argument(help="JSON: a list of rules as POST /api/v1/points/rules "
                                                        "takes them")]) -> None:
    """Create or replace rules from a JSON file, matched by name (one transaction: all or nothing)."""
    from pydantic import ValidationError

    from orchard.db import transaction
    from orchard.loyalty import rulebook
    from orchard.loyalty.schemas import RuleIn

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        bodies = [RuleIn.model_validate(item) for item in (raw if isinstance(raw, list) else [raw])]
    except (OSError, ValueError, ValidationError) as exc:
        console.print(f"[red]无法读取 cannot read {path}: {exc}[/red]")
        raise typer.Exit(2) from None
    try:
        with transaction() as session:
            for i, body in enumerate(bodies):
                try:
                    known = rulebook.by_name(session, body.name)
                    rule = rulebook.replace(session, known.id, body, actor="cli") if known else \
                        rulebook.create(session, body, actor="cli")
                except OrchardError as exc:
                    raise OrchardError(f"rule [{i}] {body.name!r}: {exc.detail}") from None
                console.print(f"{'更新 replaced' if known else '新建 created'} #{rule.id} {rule.name}")
    except OrchardError as exc:
        console.print(f"[red]{exc.detail}[/red] (nothing loaded)")
        raise typer.Exit(1) from None


# ---- tiers --------------------------------------------------------------------------------------

tiers_app = typer.Typer(help="会员等级 / tiers", no_args_is_help=True)
app.add_typer(tiers_app, name="tiers")


@tiers_app.command("evaluate")
def tiers_evaluate() -> None:
    """Re-evaluate every member's tier in one set-based pass (schedule it daily): upgrades, renewed
    holds, downgrades after the hold, ended overrides."""
    from orchard.db import transaction
    from orchard.loyalty import tiers

    with transaction() as session:
        r = tiers.evaluate(session, actor="cli")
    console.print(f"评估 evaluated {r.members:,} members: 升级 upgraded {r.upgraded:,}, 降级 downgraded "
                  f"{r.downgraded:,}, 特批到期 overrides ended {r.overrides_ended:,}")


@tiers_app.command("show")
def tiers_show() -> None:
    """The tier program, its levels, and how many members hold each."""
    from rich.table import Table
    from sqlalchemy import func, select

    from orchard.db import transaction
    from orchard.loyalty import tiers
    from orchard.loyalty.models import MemberTier
    from orchard.members.models import Member

    with transaction(readonly=True) as session:
        prog = tiers.program(session)
        if prog is None:
            console.print("尚未设置等级体系 / no tier program (PUT /api/v1/tiers)")
            raise typer.Exit(1)
        held = dict(session.execute(select(MemberTier.level_id, func.count()).group_by(MemberTier.level_id)).all())
        active = session.scalar(select(func.count()).select_from(Member).where(Member.status == "active")) or 0
        levels = tiers.levels(session)
        console.print(f"指标 metric {prog.metric} · 周期 period {prog.period} · 降级 downgrade {prog.downgrade} · "
                      f"保级 hold {prog.hold_days} days")
        table = Table("rank", "code", "名称 name", "门槛 threshold", "会员 members", "权益 benefits")
        above_base = sum(held.get(lv.id, 0) for lv in levels[1:])
        for i, lv in enumerate(levels):
            n = active - above_base if i == 0 else held.get(lv.id, 0)
            table.add_row(str(lv.rank), lv.code, lv.name, f"{lv.threshold:,}", f"{n:,}",
                          json.dumps(lv.benefits, ensure_ascii=False))
    console.print(table)


# ---- coupons ------------------------------------------------------------------------------------

coupons_app = typer.Typer(help="优惠券 / coupons", no_args_is_help=True)
app.add_typer(coupons_app, name="coupons")


@coupons_app.command("templates")
def coupons_templates() -> None:
    """Every coupon template with what it gives, its limits and its redemption rate (核销率)."""
    from rich.table import Table

    from orchard.coupons import templates
    from orchard.db import transaction

    table = Table("id", "名称 name", "券面 label", "状态 status", "有效期 validity", "已发 issued", "上限 limit",
                  "已核销 redeemed", "核销率 rate")
    with transaction(readonly=True) as session:
        rates = {r.template_id: r for r in templates.stats(session)}
        for t in templates.listing(session):
            validity = f"领取后{t.valid_days}天" if t.validity == "relative" else \
                f"{t.valid_from:%Y-%m-%d %H:%M} – {t.valid_to:%Y-%m-%d %H:%M} UTC"
            r = rates[t.id]
            table.add_row(str(t.id), t.name, templates.label(t), t.status, validity, f"{t.issued_count:,}",
                          f"{t.total_limit:,}" if t.total_limit else "-", f"{r.redeemed:,}", f"{r.redemption_rate:.1%}")
    console.print(table)


@coupons_app.command("issue")
def coupons_issue(
    template_id: Annotated[int, typer.Argument(help="the coupon template")],
    members_file: Annotated[Path, typer.Option(help="member ids, one per line (blank lines and # comments skipped)")],
    reason: Annotated[str, typer.Option(help="why (audited)")] = "批量发券 bulk issue",
    external_id: Annotated[str | None, typer.Option(help="idempotency key; default: derived from the template "
                                                         "and the file, so re-running the command is a no-op")] = None,
) -> None:
    """Issue one coupon of the template to every listed member in one set-based pass (one transaction:
    all or nothing). Unknown or merged-away ids and members at the per-member limit are skipped."""
    import hashlib
    import time

    from orchard.coupons import issuing
    from orchard.db import transaction

    ids: list[int] = []
    try:
        with members_file.open(encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, start=1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                if not text.isdigit() or not 1 <= int(text) <= 2**62:
                    err.print(f"[red]第 {n} 行不是会员 id / line {n} is not a member id:[/red] {text[:40]!r}")
                    raise typer.Exit(2)
                ids.append(int(text))
    except OSError as exc:
        err.print(f"[red]无法读取文件 / cannot read the file:[/red] {exc}")
        raise typer.Exit(2) from None
    if not ids:
        err.print("[red]文件中没有会员 id / no member ids in the file[/red]")
        raise typer.Exit(2)
    if external_id is None:
        digest = hashlib.sha256(f"{template_id}:{reason}:".encode() + ",".join(map(str, sorted(set(ids)))).encode())
        external_id = f"file-{digest.hexdigest()[:24]}"
    started = time.perf_counter()
    try:
        with err.status(f"发券中 issuing to {len(ids):,} ids…"), transaction() as session:
            batch, created = issuing.issue_bulk(session, template_id=template_id, member_ids=ids, source="cli",
                                                external_id=external_id, reason=reason, actor="cli")
    except OrchardError as exc:
        _fail(exc)
    seconds = time.perf_counter() - started
    if not created:
        console.print(f"已发过 / already issued as batch #{batch.id} ({external_id}); nothing new")
    sk = batch.skipped
    console.print(f"批次 batch #{batch.id}: 请求 requested {batch.requested:,}, 已发 issued {batch.issued:,}, "
                  f"跳过 skipped: 无此会员 unknown {sk.get('unknown', 0):,}, 超每人上限 member limit "
                  f"{sk.get('member_limit', 0):,}, 超总量 total limit {sk.get('total_limit', 0):,} "
                  f"({seconds:.1f}s)", soft_wrap=True)


@coupons_app.command("expire")
def coupons_expire() -> None:
    """Expire every issued coupon past its window in one set-based pass (schedule it daily; re-running
    is a no-op)."""
    from orchard.coupons.redeeming import expire_due
    from orchard.db import transaction

    with transaction() as session:
        n = expire_due(session)
    console.print(f"过期 expired {n:,} 张券 coupons")


# Scoring (issue 5): lifecycle, RFM and preference tags.
scoring_app = typer.Typer(help="评分 / lifecycle, RFM, preference tags", no_args_is_help=True)
app.add_typer(scoring_app, name="scoring")


@scoring_app.command("run")
def scoring_run(at: When = None) -> None:
    """Recompute lifecycle stages, RFM and the built-in preference tags in one transaction (schedule it
    daily, after midnight in the tenant's zone). --at: the snapshot moment (default now)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from orchard.db import transaction
    from orchard.kit.clock import as_utc, utcnow
    from orchard.scoring import lifecycle, preferences, rfm

    given = _when(at, "at")
    now = as_utc(given) if given is not None else utcnow()
    steps = (("生命周期 / lifecycle", lifecycle.refresh), ("RFM", rfm.refresh),
             ("偏好标签 / preference tags", preferences.refresh))
    results = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err) as progress, \
            transaction() as session:
        for label, refresh in steps:
            task = progress.add_task(label, total=1)
            results[label] = refresh(session, now=now)
            progress.update(task, completed=1)
    console.print_json(json.dumps(results, ensure_ascii=False, default=str))


@scoring_app.command("show")
def scoring_show(member_id: int) -> None:
    """A member's stage, RFM class and lifecycle history as JSON."""
    from orchard.auth.roles import Role
    from orchard.auth.service import Principal
    from orchard.db import transaction
    from orchard.scoring import reads

    system = Principal("system", 0, "cli", Role.admin, None, False)
    try:
        with transaction(readonly=True) as session:
            read = reads.member_scores(session, system, member_id, english=False)
    except OrchardError as exc:
        _fail(exc)
    console.print_json(json.dumps(read.model_dump(mode="json"), ensure_ascii=False))




# ---- segments, refresh, scheduler ---------------------------------------------------------------

segments_app = typer.Typer(help="人群包 / saved segments", no_args_is_help=True)
app.add_typer(segments_app, name="segments")


@app.command("refresh")
def refresh_command(
    only: Annotated[list[str] | None, typer.Option(help="lifecycle, rfm, preferences, tags, segments")] = None,
) -> None:
    """Recompute lifecycle stages, RFM and value tiers, preference and rule tags and saved segments,
    in dependency order, set-based (the server also runs it nightly)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from orchard.segments import refresh

    steps = [s for s in refresh.STEPS if not only or s in only]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("刷新 refresh", total=len(steps))

        def progress(name: str, entry: dict) -> None:
            bar.update(task, advance=1, description=f"刷新 refresh: {name} {entry['seconds']} s")

        try:
            results = refresh.run(only=only, progress=progress)
        except OrchardError as exc:
            _fail(exc)
    for entry in results:
        console.print(f"{entry['step']:<12} {entry['seconds']:>8} s  {_brief(entry['result'])}")


def _brief(result) -> str:
    if isinstance(result, list):
        return "; ".join(", ".join(f"{k}={v}" for k, v in r.items()) for r in result[:20]) or "—"
    if isinstance(result, dict):
        return ", ".join(f"{k}={v}" for k, v in result.items())
    return str(result)


@segments_app.command("list")
def segments_list() -> None:
    """Saved segments with their size and last refresh."""
    from sqlalchemy import select

    from orchard.db import transaction
    from orchard.segments.models import Segment

    with transaction(readonly=True) as session:
        for seg in session.scalars(select(Segment).order_by(Segment.code)):
            console.print(f"{seg.code:<24} {seg.status:<9} {seg.size:>10,}  v{seg.version}  "
                          f"{seg.refreshed_at or '—'}  {seg.name}")


@segments_app.command("preview")
def segments_preview(file: Annotated[Path, typer.Argument(help="a JSON file holding a definition")]) -> None:
    """Count and per-condition counts of a definition (unmasked: the CLI is an operator's tool)."""
    from orchard.db import transaction
    from orchard.imports.pg_bulk import SYSTEM
    from orchard.segments import preview

    try:
        definition = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        console.print(f"[red]无法读取 cannot read {file}: {exc}[/red]")
        raise typer.Exit(2) from None
    try:
        with transaction(readonly=True) as session:
            out = preview.preview(session, principal=SYSTEM, definition=definition, sample_size=0)
    except OrchardError as exc:
        _fail(exc)
    console.print(f"人数 count {out['count']:,} / {out['population']:,}  ({out['elapsed_ms']} ms)")
    for c in out["conditions"]:
        console.print(f"  {c['path']:<28} {c['count']:>10,}  {json.dumps(c['condition'], ensure_ascii=False)}")


@segments_app.command("refresh")
def segments_refresh(codes: Annotated[list[str] | None, typer.Argument()] = None) -> None:
    """Refresh the named saved segments (all when none is named)."""
    from orchard.db import transaction
    from orchard.segments import service

    try:
        with transaction() as session:
            for r in service.refresh(session, codes=codes or None):
                console.print(f"{r['segment']:<24} size {r['size']:,}  +{r['entered']:,} −{r['exited']:,}  "
                              f"{r['ms']} ms")
    except OrchardError as exc:
        _fail(exc)


@segments_app.command("sweep")
def segments_sweep() -> None:
    """Re-check queued members and those whose flip time has come (the server does this every 10 s)."""
    from orchard.db import transaction
    from orchard.segments import service

    with transaction() as session:
        r = service.sweep(session)
    console.print(f"flipped {r['flipped']:,}, members re-checked {r['members']:,}, segments changed "
                  f"{len(r['segments'])}")


scheduler_app = typer.Typer(help="定时任务 / scheduled jobs", no_args_is_help=True)
app.add_typer(scheduler_app, name="scheduler")


@scheduler_app.command("status")
def scheduler_status() -> None:
    """Each periodic job: next run, last run, status and duration."""
    from orchard.db import transaction
    from orchard.kit.clock import tenant_zone
    from orchard.scheduler import runner

    with transaction() as session:
        runner.ensure_rows(session)
    with transaction(readonly=True) as session:
        zone = tenant_zone()
        for job in runner.status(session):
            console.print(f"{job.name:<22} next {job.next_run_at.astimezone(zone):%Y-%m-%d %H:%M:%S %Z}  last "
                          f"{job.last_status or '—'} {job.last_duration_ms or 0} ms")


@scheduler_app.command("run")
def scheduler_run() -> None:
    """Run every job that is due now, once (for cron-driven deployments without `orchard serve`)."""
    from orchard.scheduler import runner

    console.print("ran: " + (", ".join(runner.run_due()) or "nothing due"))


# ---- journeys -----------------------------------------------------------------------------------

journeys_app = typer.Typer(help="自动化旅程 / journeys", no_args_is_help=True)
app.add_typer(journeys_app, name="journeys")


@journeys_app.command("ready")
def journeys_ready(
    publish: Annotated[bool, typer.Option(help="publish and start them (default: drafts to review)")] = False,
    coupon_template: Annotated[int | None, typer.Option(help="coupon template for the first-order journey")] = None,
) -> None:
    """Install the shipped journeys and their message templates (existing codes are left alone)."""
    from orchard.db import transaction
    from orchard.journeys import ready

    try:
        with transaction() as session:
            out = ready.install(session, actor="cli", coupon_template_id=coupon_template, publish=publish)
    except OrchardError as exc:
        _fail(exc)
    console.print(f"templates: {', '.join(out['templates']) or '—'}\njourneys: {', '.join(out['journeys']) or '—'}\n"
                  f"published: {', '.join(out['published']) or '—'}")


@journeys_app.command("sweep")
def journeys_sweep() -> None:
    """Enter members into live journeys (every trigger kind) and end converted runs (the server does
    this in three jobs: event triggers every 5 s, date / absence / schedule triggers every 10 min,
    conversions every 30 s)."""
    from orchard.db import transaction
    from orchard.journeys import engine

    with transaction() as session:
        out = engine.sweep(session)
    for code, r in out["journeys"].items():
        console.print(f"{code:<28} entered {r['entered']:,}  turned away {r['turned_away']:,}  "
                      f"converted {r['converted']:,}")


@journeys_app.command("advance")
def journeys_advance(limit: int = 10_000) -> None:
    """Advance due runs (the server does this every 5 s)."""
    from orchard.db import transaction
    from orchard.journeys import engine

    with transaction() as session:
        st = engine.advance(session, limit=limit)
    console.print(f"runs {st.runs:,}, steps {st.steps:,}, sent {st.sent:,}, suppressed {st.suppressed:,}, "
                  f"completed {st.completed:,}, exited {st.exited:,}")


@app.command("worker")
def worker(tick: Annotated[float, typer.Option(help="seconds between rounds")] = 2.0) -> None:
    """Run the periodic jobs without serving HTTP: journey sweeps and steps, message dispatch, segment
    sweeps and refreshes, expiry. Run several on PostgreSQL: jobs are leased, claims use SKIP LOCKED."""
    from orchard.scheduler.runner import Scheduler

    console.print("worker started (Ctrl-C to stop)")
    scheduler = Scheduler(tick_seconds=tick)
    scheduler.start()
    try:
        while not scheduler.wait(3600):
            pass
    except KeyboardInterrupt:
        scheduler.stop()


if __name__ == "__main__":  # pragma: no cover
    app()
