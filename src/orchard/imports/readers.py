"""Streaming readers for CSV and XLSX: constant memory whatever the file size.

CSV encoding: a UTF-8 BOM means UTF-8; otherwise the first 256 KB are tried as UTF-8 and, if that
fails, the file is read as GB18030 (what Chinese Excel writes; a superset of GBK and GB2312).
XLSX: openpyxl in read-only mode, first worksheet, cached values (never formulas).
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE = 256 * 1024


class FileUnreadable(Exception):
    """The file itself cannot be read (missing, not CSV/XLSX, undecodable, no header)."""


@dataclass
class Table:
    headers: list[str]
    rows: Iterator[tuple[int, list[Any]]]  # (1-based row number in the file, values)
    encoding: str | None


def detect_encoding(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(SAMPLE)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=len(head) < SAMPLE)  # a cut multi-byte character at the end is fine
        return "utf-8"
    except UnicodeDecodeError:
        return "gb18030"


def open_table(path: Path) -> Table:
    if not path.is_file():
        raise FileUnreadable(f"no such file: {path}")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"PK\x03\x04":
        return _xlsx(path)
    return _csv(path)


def _csv(path: Path) -> Table:
    encoding = detect_encoding(path)
    fh = path.open("r", encoding=encoding, newline="")
    reader = csv.reader(fh)
    try:
        headers = next(reader)
    except StopIteration:
        fh.close()
        raise FileUnreadable("the file is empty") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        fh.close()
        raise FileUnreadable(f"cannot read the header: {exc}") from None

    def rows() -> Iterator[tuple[int, list[Any]]]:
        try:
            for values in reader:
                if any(v.strip() for v in values):
                    yield reader.line_num, values
        except UnicodeDecodeError as exc:
            raise FileUnreadable(f"not valid {encoding} near line {reader.line_num + 1}: {exc.reason}") from None
        except csv.Error as exc:
            raise FileUnreadable(f"malformed CSV near line {reader.line_num}: {exc}") from None
        finally:
            fh.close()

    return Table([h.strip() for h in headers], rows(), encoding)


def _xlsx(path: Path) -> Table:
    from openpyxl import load_workbook

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a damaged file
        raise FileUnreadable(f"not a readable XLSX file: {exc}") from None
    ws = wb.worksheets[0]
    it = ws.iter_rows(values_only=True)
    try:
        headers = ["" if h is None else str(h).strip() for h in next(it)]
    except StopIteration:
        wb.close()
        raise FileUnreadable("the first sheet is empty") from None

    def rows() -> Iterator[tuple[int, list[Any]]]:
        try:
            for n, values in enumerate(it, start=2):
                if any(v not in (None, "") for v in values):
                    yield n, [_cell(v) for v in values]
        finally:
            wb.close()

    return Table(headers, rows(), None)


def _cell(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)  # Excel stores every number as a float: 13812341234.0 is a phone number
    return v
