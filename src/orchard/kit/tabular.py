"""Spreadsheet output that streams: rows in, bytes out, memory flat whatever the row count.

Cells are rendered by the Python type of the value, the same way in CSV and XLSX:

| value | CSV text | XLSX cell |
|---|---|---|
| None | empty | empty |
| bool | `true` / `false` (the API's values, so a file re-imports cleanly) | boolean |
| `Yuan` (an amount held in fen) | yuan with two decimals, exact (`128.50`) | number, format `0.00` |
| aware datetime | the tenant's zone, `YYYY-MM-DD HH:MM:SS` | date-time in the tenant's zone |
| date | `YYYY-MM-DD` | date |
| dict / list | JSON (non-ASCII kept) | the same JSON as text |
| str, int, other | `str(value)` | text / number |

A naive datetime is taken to be in the tenant's zone already (as `kit.clock.as_utc` reads one).

Formula injection: a spreadsheet evaluates a cell that starts with `=`, `+`, `-` or `@` (and some
versions a leading tab or CR), so a member named `=HYPERLINK(...)` would run in the exporting
clerk's Excel. CSV cells starting with those characters get a leading `'` — except a plain signed
number (`-12.50`, an E.164 phone `+8613812341234`), which carries no formula and must stay a number.
XLSX cells are written with an explicit string type, which Excel never evaluates, so they need no
prefix and keep their exact text.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any, Literal
from zoneinfo import ZoneInfo

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from orchard.kit.clock import tenant_zone

Format = Literal["csv", "xlsx"]
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
#: Bytes handed out per chunk (and the CSV buffer's flush threshold, in characters).
CHUNK_BYTES = 64 * 1024
#: Excel's limit per sheet, header row included; later rows continue on "<title> (2)", "(3)", ...
XLSX_MAX_ROWS = 1_048_576
#: Excel's limit per cell; longer text is cut (with "…") rather than producing a file Excel repairs.
XLSX_MAX_CELL_CHARS = 32_767

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
_DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
_DATE_FORMAT = "yyyy-mm-dd"
_MONEY_FORMAT = "0.00"


@dataclass(frozen=True, slots=True)
class Yuan:
    """An amount held as integer fen, shown in yuan with two decimals; no float ever touches it."""

    fen: int

    def __str__(self) -> str:
        whole, cents = divmod(abs(self.fen), 100)
        return f"{'-' if self.fen < 0 else ''}{whole}.{cents:02d}"

    def decimal(self) -> Decimal:
        return Decimal(self.fen).scaleb(-2)


def yuan(fen: int | None) -> Yuan | None:
    return None if fen is None else Yuan(fen)


def guard_formula(text: str) -> str:
    """`'`-prefix a CSV cell a spreadsheet would evaluate (see the module docstring)."""
    if text and text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _local(value: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """Naive, second-precision wall time in `zone` (Excel has no time zones)."""
    if value.tzinfo is not None:
        value = value.astimezone(zone)
    return value.replace(tzinfo=None, microsecond=0)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def text(value: Any, zone: ZoneInfo | None = None) -> str:
    """The CSV text of one cell (formula-guarded)."""
    if value is None:
        return ""
    kind = type(value)
    if kind is str:  # the common cases first: this runs once per cell
        return guard_formula(value)
    if kind is int:
        return str(value)  # digits with an optional minus: a plain number, never guarded
    if isinstance(value, bool):
        out = "true" if value else "false"
    elif isinstance(value, dt.datetime):
        out = _local(value, zone or tenant_zone()).isoformat(sep=" ")
    elif isinstance(value, dt.date):
        out = value.isoformat()
    elif isinstance(value, dict | list):
        out = _json(value)
    else:
        out = str(value)  # str, int, Yuan, Decimal
    return guard_formula(out)


# ---- CSV -----------------------------------------------------------------------------------------

def csv_chunks(header: Sequence[str], rows: Iterable[Sequence[Any]], *, zone: ZoneInfo | None = None
               ) -> Iterator[bytes]:
    """UTF-8 with a BOM (`utf-8-sig`: without it, Excel in a Chinese locale reads the file as GBK
    and shows mojibake), CRLF line ends, minimal quoting. The header goes out as its own first
    chunk so a client sees the download start before the first query returns."""
    zone = zone or tenant_zone()
    encoder = codecs.getincrementalencoder("utf-8-sig")(errors="replace")
    buf = io.StringIO()
    writer = csv.writer(buf)

    def drain() -> bytes:
        data = encoder.encode(buf.getvalue())
        buf.seek(0)
        buf.truncate()
        return data

    writer.writerow([guard_formula(h) for h in header])
    yield drain()
    for row in rows:
        writer.writerow([text(v, zone) for v in row])
        if buf.tell() >= CHUNK_BYTES:
            yield drain()
    if buf.tell():
        yield drain()


# ---- XLSX ----------------------------------------------------------------------------------------

def _display_width(value: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in value)


def _clean(value: str) -> str:
    value = ILLEGAL_CHARACTERS_RE.sub("\ufffd", value)  # control characters XML 1.0 cannot hold
    if len(value) > XLSX_MAX_CELL_CHARS:
        value = value[:XLSX_MAX_CELL_CHARS - 1] + "…"
    return value


def _cell(ws, value: Any, zone: ZoneInfo) -> Any:
    """A value openpyxl writes as is, or a WriteOnlyCell carrying a number format or a forced type."""
    if value is None or isinstance(value, bool | int | float | Decimal):
        return value
    if isinstance(value, Yuan):
        cell = WriteOnlyCell(ws, value.decimal())
        cell.number_format = _MONEY_FORMAT
        return cell
    if isinstance(value, dt.datetime):
        cell = WriteOnlyCell(ws, _local(value, zone))
        cell.number_format = _DATETIME_FORMAT
        return cell
    if isinstance(value, dt.date):
        cell = WriteOnlyCell(ws, value)
        cell.number_format = _DATE_FORMAT
        return cell
    value = _clean(_json(value) if isinstance(value, dict | list) else str(value))
    if value.startswith("="):  # openpyxl would store it as a formula: force a string cell
        cell = WriteOnlyCell(ws, None)
        cell.value, cell.data_type = value, "s"
        return cell
    return value


def _add_sheet(wb: Workbook, title: str, header: Sequence[str], widths: Sequence[int]):
    ws = wb.create_sheet(title=title[:31])
    ws.freeze_panes = "A2"  # settings go before the first row in a write-only sheet
    for i, width in enumerate(widths, 1):
        ws.column_dimensions[get_column_letter(i)].width = width
    bold = Font(bold=True)
    cells = []
    for h in header:
        cell = WriteOnlyCell(ws, _clean(h))
        cell.font = bold
        cells.append(cell)
    ws.append(cells)
    return ws


def _discard(wb: Workbook) -> None:
    """Remove the temporary files of an unsaved write-only workbook (openpyxl only removes them on
    save, or at interpreter exit)."""
    for ws in wb.worksheets:
        try:
            if getattr(ws, "_rows", None) is not None:
                ws._rows.close()  # finish the suspended row writer while its file is still open
            if getattr(ws, "_writer", None) is not None:
                ws._writer.close()
                ws._writer.cleanup()
        except Exception:  # best effort: we are already on an error path
            pass


def write_xlsx(header: Sequence[str], rows: Iterable[Sequence[Any]], out: IO[bytes] | str, *,
               sheet_title: str = "Sheet1", zone: ZoneInfo | None = None) -> None:
    """Write an .xlsx with openpyxl's write-only workbook: each row is serialised to the sheet's
    temporary XML file as it is appended (strings inline, no shared-string table in memory), and
    the zip is assembled on save. Column widths come from the header and the first row."""
    zone = zone or tenant_zone()
    it = iter(rows)
    first = next(it, None)
    sample = first if first is not None else [None] * len(header)
    widths = [min(max(_display_width(h), _display_width(text(v, zone)), 8) + 2, 50)
              for h, v in zip(header, sample, strict=True)]
    wb = Workbook(write_only=True)
    try:
        sheet_no, ws = 1, _add_sheet(wb, sheet_title, header, widths)
        used = 1
        for row in _chain(first, it) if first is not None else ():
            if used >= XLSX_MAX_ROWS:
                sheet_no += 1
                ws, used = _add_sheet(wb, f"{sheet_title[:25]} ({sheet_no})", header, widths), 1
            ws.append([_cell(ws, v, zone) for v in row])
            used += 1
        wb.save(out)
    except BaseException:
        _discard(wb)
        raise


def _chain(first: Sequence[Any], rest: Iterator[Sequence[Any]]) -> Iterator[Sequence[Any]]:
    yield first
    yield from rest


def xlsx_chunks(header: Sequence[str], rows: Iterable[Sequence[Any]], *, sheet_title: str = "Sheet1",
                zone: ZoneInfo | None = None) -> Iterator[bytes]:
    """The .xlsx in chunks. An xlsx is a zip whose central directory is written last and whose
    parts openpyxl writes with seeks, so it cannot be produced into a socket: the file is built in
    an anonymous temporary file (unlinked at once, gone even if the process dies) and then read
    out. Memory stays flat; the client receives the first byte only when the workbook is done."""
    with tempfile.TemporaryFile() as f:
        write_xlsx(header, rows, f, sheet_title=sheet_title, zone=zone)
        f.seek(0)
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def chunks(fmt: Format, header: Sequence[str], rows: Iterable[Sequence[Any]], *, sheet_title: str = "Sheet1",
           zone: ZoneInfo | None = None) -> Iterator[bytes]:
    if fmt == "csv":
        return csv_chunks(header, rows, zone=zone)
    return xlsx_chunks(header, rows, sheet_title=sheet_title, zone=zone)


def write(fmt: Format, header: Sequence[str], rows: Iterable[Sequence[Any]], out: IO[bytes], *,
          sheet_title: str = "Sheet1", zone: ZoneInfo | None = None) -> None:
    """Write the file to an open binary file (the XLSX is saved into it directly, no copy)."""
    if fmt == "xlsx":
        write_xlsx(header, rows, out, sheet_title=sheet_title, zone=zone)
        return
    for chunk in csv_chunks(header, rows, zone=zone):
        out.write(chunk)
