"""The `orchard` command. Each command is one transaction (committed on success)."""

from __future__ import annotations

import json
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
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve the API (and docs at /docs)."""
    import uvicorn

    uvicorn.run("orchard.app:create_app", factory=True, host=host, port=port, workers=workers)


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
def demo(members: int = 200, seed: int = 7) -> None:
    """Load a small zh-CN demo data set (stores, staff, members, orders, events). Safe to re-run."""
    from orchard.demo import load_demo

    summary = load_demo(members=members, seed=seed)
    for line in summary:
        console.print(line)



import_app = typer.Typer(help="导入 / import CSV or XLSX (UTF-8, UTF-8 with BOM, GB18030)", no_args_is_help=True)
app.add_typer(import_app, name="import")


def _run_import(kind: str, file: Path, source: str, report: Path | None, batch_size: int | None) -> None:
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
                                progress=lambda n: bar.advance(task, n))
    except FileUnreadable as exc:
        err.print(f"[red]无法读取文件 / cannot read the file:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"{kind}: {result.rows} 行 rows — 新建 created {result.created}, 更新 updated {result.updated}, "
                  f"未变 unchanged {result.unchanged}, 错误 errors {result.errors}, 警告 warnings {result.warnings}")
    if result.unknown_columns:
        console.print(f"未识别的列（已忽略） / ignored columns: {', '.join(result.unknown_columns)}")
    if result.report_path:
        console.print(f"错误报告 / error report: {result.report_path}")


@import_app.command("orders")
def import_orders(file: Path, source: str = "import", report: Annotated[Path | None, typer.Option()] = None,
                  batch_size: Annotated[int | None, typer.Option(min=1)] = None) -> None:
    """Import orders: order_id, member_phone | member_external_id | member_card_no, paid_at, amount | amount_fen,
    store_code, channel, sku, product_name, category, quantity (Chinese headers such as 订单号, 手机号, 金额 work)."""
    _run_import("orders", file, source, report, batch_size)


@import_app.command("members")
def import_members(file: Path, source: str = "import", report: Annotated[Path | None, typer.Option()] = None,
                   batch_size: Annotated[int | None, typer.Option(min=1)] = None) -> None:
    """Import members: phone | external_id | card_no | email | wechat ids, name, gender, birthday, region,
    store_code, joined_at, source_channel (姓名, 手机号, 性别, 生日, 门店编码 … work)."""
    _run_import("members", file, source, report, batch_size)


if __name__ == "__main__":  # pragma: no cover
    app()
