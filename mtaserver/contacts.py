"""Contacts as values: validation, and the CSV / JSON-lines import formats, parsed incrementally.

Pure: no I/O. The storage owner (:mod:`mtaserver.storage.sqlite.contacts`) stores what this
module accepted; the HTTP API and the CLI feed it bytes as they arrive, so an import of any
size is parsed with a bounded buffer (one record at most ``MAX_RECORD`` bytes). Every
rejected line becomes a :class:`LineError` naming its line number; the import goes on.

Attribute names are the one thing that reaches SQL as a JSON path, so they are held to a
strict pattern (letters, digits, ``_`` and ``-``, dotted for nesting) and quoted per
segment; the path itself is always a bound parameter.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from mtaserver.errors import MtaError

STATUSES: Final = ("subscribed", "unconfirmed", "unsubscribed")
MAX_ADDRESS: Final = 320
MAX_ATTRIBUTES: Final = 16 * 1024  # bytes of one contact's attribute document as sent
MAX_KEYS: Final = 200  # top-level attribute names in one document
MAX_RECORD: Final = 64 * 1024  # bytes of one CSV record or JSON line
_SEGMENT = r"[A-Za-z_][A-Za-z0-9_-]{0,63}"
ATTR_NAME: Final = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT}){{0,3}}\Z")
LIST_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_ATOM = r"[^\s\x00-\x1f\x7f<>,;\"()\[\]\\@]+"
_ADDRESS = re.compile(rf"{_ATOM}@(?!\.){_ATOM}\Z")  # local@domain, no spaces or specials
# CSV columns that are not attributes. The export writes the consent proof columns; an
# import records its own source and time instead, so they are read and ignored.
ADDRESS_COLUMNS: Final = ("email", "address")
IGNORED_COLUMNS: Final = ("consent_source", "consent_at", "created_at", "updated_at")
Format = Literal["csv", "jsonl"]
FORMATS: Final = ("csv", "jsonl")


class ContactError(MtaError, ValueError):
    """Bad contact input; ``field`` names what to fix (``email``, ``attr.plan``, ...)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ContactConflict(ContactError):
    """The thing to create exists already (a list name)."""


def iso(t: float | None) -> str | None:
    """A stored time as the API shows it: ISO 8601 UTC to the second, with ``Z``."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ContactInput:
    """One contact to create or update. ``attributes`` is a JSON object (text) merged into
    the stored one (RFC 7396: ``null`` removes a field). ``consent`` None keeps the stored
    status (a new contact is ``subscribed``); an ``unsubscribed`` contact changes status only
    with ``resubscribe``, so a re-import never undoes an unsubscribe or a bounce."""

    address: str
    attributes: str = "{}"
    consent: str | None = None
    consent_ip: str | None = None
    resubscribe: bool = False

    def __post_init__(self) -> None:
        """Whoever builds one, the store only ever sees a normalized address and a status
        it knows."""
        object.__setattr__(self, "address", normalize_address(self.address))
        if self.consent is not None:
            check_status(self.consent)


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    message: str


def normalize_address(raw: object, field: str = "email") -> str:
    """The stored form of an address (trimmed, lower-case), or ContactError naming ``field``."""
    if not isinstance(raw, str):
        raise ContactError(f"{field}: expected an email address string", field)
    addr = raw.strip().strip("<>").strip().lower()
    if len(addr) > MAX_ADDRESS or not _ADDRESS.match(addr):
        raise ContactError(f"{field}: not an email address: {raw[:100]!r}", field)
    return addr


def attr_path(name: str, field: str | None = None) -> str:
    """``plan`` → ``$."plan"``; ``address.city`` → ``$."address"."city"`` (bound, never
    spliced into SQL). Anything outside the pattern is refused, naming ``field``."""
    where = field or f"attr.{name}"
    if not ATTR_NAME.match(name):
        raise ContactError(
            f"{where[:120]}: attribute names are letters, digits, '_' and '-', up to 64 "
            "characters, dotted for nesting (at most 4 levels)",
            where[:120],
        )
    return "$" + "".join(f'."{seg}"' for seg in name.split("."))


def check_list_name(name: object, field: str = "name") -> str:
    if not isinstance(name, str) or not LIST_NAME.match(name):
        raise ContactError(
            f"{field}: a list name is letters, digits, '_', '.' and '-', up to 64 characters",
            field,
        )
    return name


def check_status(value: object, field: str = "consent") -> str:
    if value not in STATUSES:
        raise ContactError(f"{field}: one of {', '.join(STATUSES)}", field)
    return str(value)


def attributes_json(value: object, field: str = "attributes") -> str:
    """A JSON object's canonical text; its top-level names must be valid attribute names."""
    if not isinstance(value, dict):
        raise ContactError(f"{field}: expected a JSON object", field)
    if len(value) > MAX_KEYS:
        raise ContactError(f"{field}: at most {MAX_KEYS} attributes", field)
    for key in value:
        if not isinstance(key, str) or not re.fullmatch(_SEGMENT, key):
            attr_path(str(key), f"{field}.{key}")
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if len(text.encode()) > MAX_ATTRIBUTES:
        raise ContactError(f"{field}: larger than {MAX_ATTRIBUTES} bytes", field)
    return text


_CONTACT_KEYS = frozenset({"email", "address", "attributes", "consent", "consent_ip",
                           "resubscribe", *IGNORED_COLUMNS})  # fmt: skip


def contact_input(obj: object, where: str = "") -> ContactInput:
    """A ContactInput from a JSON object ``{"email", "attributes", "consent", "consent_ip",
    "resubscribe"}`` (an export's proof fields, ``IGNORED_COLUMNS``, are read and ignored);
    errors name the field with ``where`` as prefix (``contacts[3].``)."""
    if not isinstance(obj, dict):
        raise ContactError(f"{where or 'body'}: expected a JSON object", where.rstrip(".") or None)
    unknown = sorted(set(obj) - _CONTACT_KEYS)
    if unknown:
        name = f"{where}{unknown[0]}"
        raise ContactError(
            f"{name}: unknown field (known: email, attributes, consent, consent_ip, resubscribe)",
            name,
        )
    key = "email" if "email" in obj else "address"
    address = normalize_address(obj.get(key), f"{where}{key}")
    attrs = attributes_json(obj.get("attributes", {}), f"{where}attributes")
    consent = obj.get("consent")
    if consent is not None:
        consent = check_status(consent, f"{where}consent")
    ip = obj.get("consent_ip")
    if ip is not None and (not isinstance(ip, str) or len(ip) > 64):
        raise ContactError(f"{where}consent_ip: an IP address string", f"{where}consent_ip")
    resub = obj.get("resubscribe", False)
    if not isinstance(resub, bool):
        raise ContactError(f"{where}resubscribe: true or false", f"{where}resubscribe")
    return ContactInput(address, attrs, consent, ip, resub)


class RecordSplitter:
    """Bytes in, complete records out, as ``(line number, bytes | None)``; None means the
    record was longer than ``max_record`` and was skipped. For CSV a record ends at a
    newline outside quotes (RFC 4180: quotes inside fields are doubled, so an even count of
    ``"`` means the record is complete)."""

    def __init__(self, csv_quotes: bool, max_record: int = MAX_RECORD) -> None:
        self._csv = csv_quotes
        self._max = max_record
        self._buf = bytearray()
        self._line = 0  # physical lines consumed so far
        self._start = 1  # line number where the pending record starts
        self._quotes = 0  # '"' count in the pending record (CSV)
        self._skipping = False  # the pending record is over the limit: drop to its end
        self._scan = 0  # bytes of the buffer already searched (and their quotes counted)

    def feed(self, data: bytes) -> list[tuple[int, bytes | None]]:
        out: list[tuple[int, bytes | None]] = []
        buf = self._buf
        buf += data
        start, scan = 0, self._scan  # the pending record starts at buf[start]
        while True:
            nl = buf.find(b"\n", scan)
            if nl < 0:
                break
            self._line += 1
            if self._csv:
                self._quotes += buf.count(b'"', scan, nl)
            scan = nl + 1
            if self._csv and self._quotes % 2:
                if self._skipping or scan - start > self._max:  # a quote never closed: resync
                    out.append((self._start, None))
                    start = scan
                    self._next()
                continue  # the newline is inside a quoted field
            too_long = self._skipping or nl - start > self._max
            out.append((self._start, None if too_long else bytes(buf[start:nl])))
            start = scan
            self._next()
        del buf[:start]
        scan -= start
        if len(buf) > self._max:
            # keep nothing of an oversized record but the knowledge that it is one
            if self._csv:
                self._quotes += buf.count(b'"', scan)
            self._skipping = True
            del buf[:]
            scan = 0
        self._scan = scan
        return out

    def _next(self) -> None:
        self._start = self._line + 1
        self._quotes = 0
        self._skipping = False

    def close(self) -> list[tuple[int, bytes | None]]:
        if self._skipping:
            return [(self._start, None)]
        if self._buf.strip():
            return [(self._start, bytes(self._buf))]
        return []


class ImportParser:
    """An import stream (CSV with a header row, or JSON lines) → ContactInput or LineError per
    record. A bad header is a ContactError: nothing of such a file can be read."""

    def __init__(self, fmt: Format) -> None:
        if fmt not in FORMATS:
            raise ContactError(f"format: one of {', '.join(FORMATS)}", "format")
        self.fmt = fmt
        self._split = RecordSplitter(csv_quotes=fmt == "csv")
        self._columns: list[tuple[str, str]] | None = None  # (role, name) per CSV column
        self._first = True

    def feed(self, data: bytes) -> list[ContactInput | LineError]:
        return self._parse(self._split.feed(data))

    def close(self) -> list[ContactInput | LineError]:
        out = self._parse(self._split.close())
        if self.fmt == "csv" and self._columns is None:
            raise ContactError("header: the CSV file is empty (expected a header row with an "
                               "'email' column)", "header")  # fmt: skip
        return out

    def _parse(self, records: list[tuple[int, bytes | None]]) -> list[ContactInput | LineError]:
        out: list[ContactInput | LineError] = []
        for line, raw in records:
            if raw is None:
                out.append(LineError(line, f"longer than {MAX_RECORD} bytes"))
                continue
            if self._first:
                self._first = False
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                text = raw.decode("utf-8").removesuffix("\r")
            except UnicodeDecodeError:
                out.append(LineError(line, "not UTF-8"))
                continue
            if not text.strip():
                continue
            try:
                item = self._csv(text) if self.fmt == "csv" else self._jsonl(text)
            except ContactError as exc:
                if self.fmt == "csv" and self._columns is None:
                    raise
                out.append(LineError(line, str(exc)))
                continue
            if item is not None:
                out.append(item)
        return out

    def _jsonl(self, text: str) -> ContactInput:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ContactError(f"not JSON: {exc}") from None
        return contact_input(obj)

    def _csv(self, text: str) -> ContactInput | None:
        if '"' not in text:
            row = text.split(",")  # what the csv module makes of a line without quotes
        else:
            try:
                row = next(csv.reader([text], strict=True))
            except csv.Error as exc:
                raise ContactError(f"bad CSV: {exc}") from None
        if self._columns is None:
            self._columns = _header(row)
            return None
        if len(row) != len(self._columns):
            raise ContactError(f"{len(row)} fields, the header has {len(self._columns)}")
        attrs: dict[str, object] = {}
        address = consent = ip = None
        for (role, name), value in zip(self._columns, row, strict=True):
            if role == "address":
                address = normalize_address(value, name)
            elif role == "attr":
                if value != "":
                    attrs[name] = value
            elif role == "consent" and value != "":
                consent = check_status(value.strip().lower(), name)
            elif role == "ip" and value != "":
                ip = value.strip()[:64]
        assert address is not None
        # The names were checked once, in the header.
        text = json.dumps(attrs, ensure_ascii=False, separators=(",", ":"))
        if len(text) > MAX_ATTRIBUTES:
            raise ContactError(f"attributes: larger than {MAX_ATTRIBUTES} bytes", "attributes")
        return ContactInput(address, text, consent, ip)


def _header(row: list[str]) -> list[tuple[str, str]]:
    cols: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in row:
        name = raw.strip()
        low = name.lower()
        if low in seen:
            raise ContactError(f"header: column {name!r} appears twice", "header")
        seen.add(low)
        if low in ADDRESS_COLUMNS:
            cols.append(("address", low))
        elif low in ("consent", "consent_status"):
            cols.append(("consent", low))
        elif low == "consent_ip":
            cols.append(("ip", low))
        elif low in IGNORED_COLUMNS:
            cols.append(("ignore", low))
        else:
            if not re.fullmatch(_SEGMENT, name):
                raise ContactError(
                    f"header: column {name[:80]!r} is not an attribute name (letters, digits, "
                    "'_' and '-', up to 64 characters)",
                    "header",
                )
            cols.append(("attr", name))
    if sum(role == "address" for role, _ in cols) != 1:
        raise ContactError("header: the first row must name exactly one 'email' column", "header")
    return cols
