"""Tag files (`orchard import tags`, kind "tags" over HTTP): members get tags with source 'import',
new names enter the catalog, bad rows are reported, a re-import changes nothing, and a rule refresh
never takes an imported tag away."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sqlalchemy import select, text
from typer.testing import CliRunner

from orchard import db
from orchard.cli import app
from orchard.imports.service import run_import
from orchard.members.models import MemberTag, Tag, TagChange
from orchard.segments import tags as rule_tags
from orchard.segments.models import DirtyMember
from tests.factories import make_org, token_for
from tests.imports.test_jobs import data_dir, upload, wait_done  # noqa: F401 - data_dir: autouse, files in tmp


def _members(tmp_path: Path, *phones: str) -> None:
    path = tmp_path / "members.csv"
    path.write_text("手机号,会员ID,姓名\n" + "".join(f"{p},E{p[-4:]},会员{p[-4:]}\n" for p in phones), encoding="utf-8")
    assert run_import("members", path).created == len(phones)


def _ids() -> dict[str, int]:
    with db.transaction(readonly=True) as s:
        return dict(s.execute(text("SELECT value, member_id FROM identities WHERE kind = 'phone'")).tuples().all())


def _assignments() -> set[tuple[int, str, str]]:
    with db.transaction(readonly=True) as s:
        return set(s.execute(select(MemberTag.member_id, Tag.name, MemberTag.source)
                             .join(Tag, Tag.id == MemberTag.tag_id)).tuples().all())


def _report(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))[1:]


def test_a_tag_file_tags_members_reports_bad_rows_and_replays_as_unchanged(clean_db, tmp_path):
    make_org()
    _members(tmp_path, "13800000001", "13800000002", "13800000003")
    with db.transaction() as s:  # 高价值 exists in the catalog already (made by staff)
        s.add(Tag(name="高价值", kind="value", source="manual"))
    ids = _ids()
    file = tmp_path / "标签.csv"
    file.write_text(
        "手机号,会员ID,标签\n"
        "13800000001,,高价值，母婴、爱运动\n"       # three tags, Chinese separators; two are new
        "13800000002,E0002,爱运动;高价值|高价值\n"  # both keys of one member; a tag named twice
        "13900000009,,高价值\n"                     # nobody has this phone
        "13800000003,E0001,高价值\n"                # the two keys belong to two members
        "13800000003,,  \n"                         # no tag
        "12345,,高价值\n"                           # not a phone
        ",,高价值\n"                                 # no member columns
        f"13800000003,,{'长' * 65}\n",               # tag name too long
        encoding="gb18030")
    result = run_import("tags", file, report_path=tmp_path / "report.csv")
    assert (result.rows, result.created, result.updated, result.unchanged, result.errors, result.warnings) == (
        8, 2, 0, 0, 6, 1)
    one, two = ids["+8613800000001"], ids["+8613800000002"]
    assert _assignments() == {(one, "高价值", "import"), (one, "母婴", "import"), (one, "爱运动", "import"),
                              (two, "爱运动", "import"), (two, "高价值", "import")}
    report = sorted(_report(tmp_path / "report.csv"), key=lambda r: int(r[0]))
    assert [r[:2] + [r[3]] for r in report] == [
        ["2", "tags", "warning"], ["4", "member_phone", "error"], ["5", "member_phone", "error"],
        ["6", "tags", "error"], ["7", "member_phone", "error"], ["8", "member_phone", "error"],
        ["9", "tags", "error"]]
    assert "母婴, 爱运动" in report[0][2] and "no member" in report[1][2] and "several members" in report[2][2]
    with db.transaction(readonly=True) as s:
        catalog = dict(s.execute(select(Tag.name, Tag.source)).tuples().all())
        history = s.execute(select(TagChange.member_id, TagChange.change, TagChange.source, TagChange.actor)
                            .order_by(TagChange.id)).all()
        queued = set(s.scalars(select(DirtyMember.member_id)))
    assert catalog == {"高价值": "manual", "母婴": "import", "爱运动": "import"}
    assert [tuple(h) for h in history] == [(one, "added", "import", "import:import")] * 3 + [
        (two, "added", "import", "import:import")] * 2
    assert {one, two} <= queued

    again = run_import("tags", file, report_path=tmp_path / "again.csv")
    assert (again.created, again.updated, again.unchanged, again.errors, again.warnings) == (0, 0, 2, 6, 0)
    with db.transaction(readonly=True) as s:
        assert s.scalar(text("SELECT count(*) FROM tag_changes")) == 5


def test_batches_end_where_one_batch_ends(clean_db, tmp_path):
    """Rows of one member and of new tags spread over many batches of 3: the same assignments, one
    history row each, and each new tag's warning only on the first row naming it."""
    make_org()
    phones = [f"138000000{i:02d}" for i in range(1, 9)]
    _members(tmp_path, *phones)
    file = tmp_path / "t.csv"
    rows = [phones[0]] + phones  # the first member twice in the first batch
    file.write_text("member_phone,tags\n" + "".join(f"{p},新客\n" for p in rows)
                    + "".join(f"{p},老客,新客\n" for p in phones), encoding="utf-8")
    result = run_import("tags", file, batch_size=3, report_path=tmp_path / "r.csv")
    assert (result.rows, result.created, result.unchanged, result.errors, result.warnings) == (17, 16, 1, 0, 2)
    assert [r[0] for r in _report(tmp_path / "r.csv")] == ["2", "11"]
    assert len(_assignments()) == 16
    with db.transaction(readonly=True) as s:
        assert s.scalar(text("SELECT count(*) FROM tag_changes")) == 16


def test_a_rule_refresh_keeps_imported_tags_and_an_import_adopts_a_rule_assignment(clean_db, tmp_path):
    make_org()
    _members(tmp_path, "13800000001", "13800000002")
    ids = _ids()
    one, two = ids["+8613800000001"], ids["+8613800000002"]
    with db.transaction() as s:  # a rule tag that matches member one only
        s.execute(text("UPDATE member_aggregates SET total_spend_fen = 90000 WHERE member_id = :m"), {"m": one})
        from tests.segments.helpers import ADMIN
        rule_tags.define(s, principal=ADMIN, name="高消费", kind="value",
                         definition={"field": "total_spend_fen", "op": "gte", "value": 50_000})
    assert _assignments() == {(one, "高消费", "rule")}
    file = tmp_path / "t.csv"
    file.write_text("手机号,标签\n13800000001,高消费\n13800000002,高消费\n", encoding="utf-8")
    result = run_import("tags", file)
    assert (result.created, result.updated) == (1, 1)
    assert _assignments() == {(one, "高消费", "import"), (two, "高消费", "import")}
    with db.transaction() as s:  # member one stops matching, member two never did: both keep the tag
        s.execute(text("UPDATE member_aggregates SET total_spend_fen = 0"))
        assert rule_tags.refresh(s) == [{"tag": "高消费", "added": 0, "removed": 0, "size": 2}]
    assert _assignments() == {(one, "高消费", "import"), (two, "高消费", "import")}


def test_the_cli_and_an_http_upload(clean_db, client, tmp_path):
    make_org()
    _members(tmp_path, "13800000001")
    file = tmp_path / "tags.csv"
    file.write_text("mobile,tag\n13800000001,VIP\n13800000002,VIP\n", encoding="utf-8")
    out = CliRunner().invoke(app, ["import", "tags", str(file), "--report", str(tmp_path / "r.csv")])
    assert out.exit_code == 0, out.output
    assert "新建 created 1" in out.output and "错误 errors 1" in out.output and str(tmp_path / "r.csv") in out.output

    token = token_for(client, "admin")
    content = "手机号,会员标签\n13800000001,VIP、复购\n".encode("utf-8-sig")
    r = upload(client, token, "tags", content, name="标签.csv")
    assert r.status_code == 202, r.text
    done = wait_done(client, token, r.json()["id"])
    assert (done["status"], done["kind"], done["created"], done["warnings"]) == ("succeeded", "tags", 1, 1)
    assert {(n, s) for _, n, s in _assignments()} == {("VIP", "import"), ("复购", "import")}
