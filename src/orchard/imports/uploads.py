"""The body of `POST /api/v1/imports`: multipart/form-data with `kind`, `file` and optionally
`source` and `earn` (orders only: true/false), parsed as it arrives (python-multipart's streaming
parser) with the file written straight to `ORCHARD_DATA_DIR/imports/<token>/upload.csv|xlsx` —
never held in memory, never copied from a temporary file. File bytes are hashed (SHA-256) and
written in a worker thread, so the event loop only parses.

Every refusal is a problem response naming the field: 415 (not multipart), 400 (malformed or
truncated multipart), 413 (file over ORCHARD_UPLOAD_MAX_BYTES), 422 (kind, source, earn or file
missing or invalid, earn with a kind other than orders, an unknown or repeated field). `kind`,
`source` and `earn` are checked as soon as their part ends, so a bad kind sent before the file
stops the upload there. Anything refused leaves no file.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from anyio import to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request

from orchard.config import get_settings
from orchard.errors import InvalidInput, OrchardError
from orchard.imports.models import KINDS

#: Room for the multipart framing and the small fields on top of the file itself.
FORM_OVERHEAD = 64 * 1024
#: Largest value of a text field (kind, source).
FIELD_MAX = 1024
#: File bytes are handed to the writer thread in pieces of about this size.
FLUSH_BYTES = 1024 * 1024
MAX_PARTS = 8
FIELDS = ("kind", "file", "source", "earn")
SOURCE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
SUFFIXES = (".csv", ".txt", ".xlsx")


class UploadTooLarge(OrchardError):
    status_code = 413
    code = "imports.too_large"
    title = "请求体过大"


class UnsupportedMediaType(OrchardError):
    status_code = 415
    code = "imports.unsupported_media_type"
    title = "不支持的媒体类型"


class MalformedUpload(OrchardError):
    status_code = 400
    code = "imports.malformed_body"
    title = "请求体无法解析"


@dataclass
class Upload:
    kind: str
    source: str
    file_name: str
    size: int
    sha256: str
    path: Path  # the stored file; its directory belongs to this upload alone
    earn: bool = False

    def discard(self) -> None:
        shutil.rmtree(self.path.parent, ignore_errors=True)


def _too_large(limit: int) -> UploadTooLarge:
    return UploadTooLarge(f"the file is larger than {limit} bytes (ORCHARD_UPLOAD_MAX_BYTES)",
                          errors=[{"field": "file", "reason": f"larger than {limit} bytes"}])


def _malformed(reason: str) -> MalformedUpload:
    return MalformedUpload(f"not valid multipart/form-data: {reason}", errors=[{"field": "body", "reason": reason}])


def _header_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def clean_file_name(raw: str | None) -> str:
    """The client's file name for display: base name only, no control characters, ≤ 255 chars."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return (name or "upload")[-255:]


def check_kind(value: str) -> str:
    value = value.strip()
    if value not in KINDS:
        raise InvalidInput.field("kind", f"must be one of {', '.join(KINDS)}")
    return value


def check_earn(value: str) -> bool:
    value = value.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidInput.field("earn", "true or false")
    return value in ("true", "1")


def check_source(value: str) -> str:
    value = value.strip()
    if not SOURCE.match(value):
        raise InvalidInput.field("source", "1–64 characters: letters, digits, _ . : -")
    return value


@dataclass
class _Form:
    """python-multipart callbacks: text fields into memory (checked at their end), file bytes into
    `pending` for the writer thread."""

    limit: int
    values: dict[str, Any] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    file_name: str | None = None
    size: int = 0
    pending: list[bytes] = field(default_factory=list)
    pending_size: int = 0
    parts: int = 0
    _part: str | None = None
    _text: bytearray = field(default_factory=bytearray)
    _header: bytes = b""
    _value: bytes = b""
    _disposition: bytes = b""

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.on_part_begin, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished}

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InvalidInput.field("body", f"more than {MAX_PARTS} parts; send kind, file and optionally source")
        self._part, self._text, self._disposition = None, bytearray(), b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.strip().lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise _malformed("a part has no Content-Disposition name")
        name = _header_text(options[b"name"])
        if name not in FIELDS:
            raise InvalidInput.field(name[:64] or "body", "unknown field; send kind, file and optionally source "
                                                          "and earn")
        if name in self.seen:
            raise InvalidInput.field(name, "sent more than once")
        self.seen.add(name)
        self._part = name
        if name == "file":
            self.file_name = clean_file_name(_header_text(options[b"filename"]) if b"filename" in options else None)
            suffix = Path(self.file_name).suffix.lower()
            if suffix and suffix not in SUFFIXES:
                raise InvalidInput.field("file", f"{suffix} files cannot be imported: send CSV or XLSX "
                                                 "(save an .xls workbook as .xlsx or CSV first)")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = bytes(data[start:end])
        if self._part == "file":
            self.size += len(chunk)
            if self.size > self.limit:
                raise _too_large(self.limit)
            self.pending.append(chunk)
            self.pending_size += len(chunk)
        else:
            if len(self._text) + len(chunk) > FIELD_MAX:
                raise InvalidInput.field(self._part or "body", f"longer than {FIELD_MAX} bytes")
            self._text += chunk

    def on_part_end(self) -> None:
        if self._part in ("kind", "source", "earn"):
            try:
                value = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput.field(self._part, "not UTF-8 text") from None
            self.values[self._part] = _CHECKS[self._part](value)

    def take(self) -> bytes:
        data = b"".join(self.pending)
        self.pending, self.pending_size = [], 0
        return data


_CHECKS = {"kind": check_kind, "source": check_source, "earn": check_earn}


def _write(fh: BinaryIO, digest: Any, data: bytes) -> None:
    digest.update(data)
    fh.write(data)


async def receive(request: Request) -> Upload:
    """Parse the request body, storing the file; raises a problem (and keeps nothing) when refused."""
    settings = get_settings()
    limit = settings.upload_max_bytes
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data":
        raise UnsupportedMediaType("send multipart/form-data with the fields kind, file and optionally source",
                                   errors=[{"field": "Content-Type", "reason": "must be multipart/form-data"}])
    boundary = params.get(b"boundary")
    if not boundary:
        raise _malformed("the Content-Type has no boundary")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + FORM_OVERHEAD:
        raise _too_large(limit)
    form = _Form(limit)
    try:
        parser = MultipartParser(boundary, form.callbacks())  # refuses an overlong boundary
    except (FormParserError, ValueError) as exc:
        raise _malformed(str(exc)) from None

    directory = Path(settings.data_dir) / "imports" / uuid.uuid4().hex
    await to_thread.run_sync(lambda: directory.mkdir(parents=True))
    part = directory / "upload.part"
    fh = await to_thread.run_sync(part.open, "wb")
    digest = hashlib.sha256()
    try:
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit + FORM_OVERHEAD:
                    raise _too_large(limit)
                parser.write(chunk)
                if form.pending_size >= FLUSH_BYTES:
                    await to_thread.run_sync(_write, fh, digest, form.take())
        except ClientDisconnect:
            raise _malformed("the client went away before the end of the body") from None
        except FormParserError as exc:
            raise _malformed(str(exc)) from None
        if parser.state != MultipartState.END:
            raise _malformed("the body ends before the closing boundary")
        await to_thread.run_sync(_write, fh, digest, form.take())
        await to_thread.run_sync(fh.close)

        errors = [{"field": name, "reason": "required"} for name in ("kind", "file") if name not in form.seen]
        if form.values.get("earn") and form.values.get("kind", "orders") != "orders":
            errors.append({"field": "earn", "reason": "only an orders import earns points"})
        if form.file_name is not None and form.size == 0:
            errors.append({"field": "file", "reason": "the file is empty"})
        if errors:
            raise InvalidInput("; ".join(f"{e['field']}: {e['reason']}" for e in errors), errors=errors)
        stored = directory / ("upload.xlsx" if Path(form.file_name or "").suffix.lower() == ".xlsx" else "upload.csv")
        await to_thread.run_sync(part.rename, stored)
        return Upload(kind=form.values["kind"], source=form.values.get("source", "import"),
                      file_name=form.file_name or "upload", size=form.size, sha256=digest.hexdigest(), path=stored,
                      earn=form.values.get("earn", False))
    except BaseException:
        fh.close()
        shutil.rmtree(directory, ignore_errors=True)
        raise
