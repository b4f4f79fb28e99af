"""Reading subscriber CSV files as people save them: encoding, delimiter, header, columns, rows.

Records are split on the raw bytes (a newline outside double quotes ends one) before decoding, so
one undecodable row is reported alone and the byte offset after every record is known, which is
what a resumed import starts from. This works for UTF-8 and Shift_JIS/CP932 alike: neither uses
the bytes of '"' or newline inside a multi-byte character.

Longer than 400 lines: it is the whole reading of a file (encoding, records, layout, columns, rows) as
pure functions, each used by the next, which the runner and the preview share.
"""

from __future__ import annotations

import csv
import json
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from typing import Any

from charset_normalizer import from_bytes

from services.common.errors import Problem, explanation_json
from services.common.privacy import email_hasher
from services.lists.fields import MAX_TEXT, FieldDef, coerce
from services.lists.validation import MAX_NAME, check_email, check_name

ENCODINGS = {
    "utf-8": "utf-8-sig",
    "utf8": "utf-8-sig",
    "utf-8-sig": "utf-8-sig",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "cp932": "cp932",
    "ms932": "cp932",
    "windows-31j": "cp932",
}
EMAIL_HEADERS = {"email", "e-mail", "mail", "email address", "emailaddress", "メールアドレス", "メール", "eメール"}
NAME_HEADERS = {"name", "名前", "氏名", "お名前", "full name"}
MAX_RAW = 500

# Plain ASCII addresses take this path: about 1 µs instead of email-validator's 100. Anything else
# (quotes, IDN, unusual or special-use domains) goes to email-validator, so both agree on what passes.
_FAST_EMAIL = re.compile(
    r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,63}))"
)
_SPECIAL_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test", "example", "internal", "home"})


def normalize_email(text: str) -> str:
    """Return the normalised address (as email-validator would), or raise ValueError saying why."""
    match = _FAST_EMAIL.fullmatch(text)
    if match and len(match.group(1)) <= 64 and len(text) <= 254 and match.group(3).lower() not in _SPECIAL_TLDS:
        return f"{match.group(1)}@{match.group(2).lower()}"
    return check_email(text)


def choose_encoding(sample: bytes, requested: str) -> str:
    """The Python codec to read the file with: the one asked for, else detected from the sample."""
    if requested:
        codec = ENCODINGS.get(requested.strip().lower())
        if codec is None:
            raise ValueError(f"unknown encoding {requested!r}: use utf-8 or shift_jis")
        return codec
    if sample.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    # A sample cut mid-character must not count against UTF-8: judge it up to its last newline.
    cut = sample.rfind(b"\n")
    head = sample[: cut + 1] if cut > 0 else sample
    try:
        head.decode("utf-8")
        return "utf-8-sig"
    except UnicodeDecodeError:
        pass
    best = from_bytes(head).best()
    name = (best.encoding if best else "").lower().replace("-", "_")
    if name in ("shift_jis", "cp932", "sjis", "ms932", "windows_31j", "shift_jis_2004", "shift_jisx0213"):
        return "cp932"
    try:
        head.decode("cp932")
        return "cp932"
    except UnicodeDecodeError:
        pass
    return name or "utf-8-sig"


def split_records(buf: bytes, final: bool) -> tuple[list[tuple[bytes, int]], int]:
    """Cut complete records off the buffer: [(record without line end, offset after it)], bytes consumed."""
    records: list[tuple[bytes, int]] = []
    start = pos = 0
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            break
        # An odd number of quotes means the newline is inside a quoted field.
        if buf.count(b'"', start, nl) % 2:
            pos = nl + 1
            continue
        end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl
        records.append((buf[start:end], nl + 1))
        start = pos = nl + 1
    if final and start < len(buf):
        tail = buf[start:]
        records.append((tail[:-1] if tail.endswith(b"\r") else tail, len(buf)))
        start = len(buf)
    return records, start


def looks_like_email(cell: str) -> bool:
    """True when a cell is shaped like an address (used to tell a header row from data)."""
    return "@" in cell and " " not in cell.strip()


def sniff(lines: Sequence[str], requested_delimiter: str, header: int) -> tuple[str, bool]:
    """Return (delimiter, has_header) for the first lines of a file."""
    delimiter = requested_delimiter
    if not delimiter:
        try:
            delimiter = csv.Sniffer().sniff("\n".join(lines[:50]), delimiters=",\t;|").delimiter
        except csv.Error:
            delimiter = ","
    if header in (1, 2):
        return delimiter, header == 1
    rows = list(csv.reader(lines[:2], delimiter=delimiter))
    first = rows[0] if rows else []
    if any(looks_like_email(c) for c in first):
        return delimiter, False
    if first and any(h.strip().lower() in EMAIL_HEADERS for h in first):
        return delimiter, True
    # A first row without an address above one with an address names the columns, whatever they are called.
    if len(rows) > 1 and any(looks_like_email(c) for c in rows[1]):
        return delimiter, True
    try:
        return delimiter, csv.Sniffer().has_header("\n".join(lines[:50]))
    except csv.Error:
        return delimiter, True


def guess_targets(header: Sequence[str] | None, first_row: Sequence[str], defs: Mapping[str, FieldDef]) -> list[str]:
    """What each column maps to without a mapping: by header (email/メールアドレス, name/名前, field keys or
    labels), else the first column whose value looks like an address is the email."""
    width = len(header) if header is not None else len(first_row)
    targets = [""] * width
    names = [h.strip() for h in header] if header is not None else [""] * width
    by_label = {d.label.strip().lower(): d.key for d in defs.values()}
    for index, name in enumerate(names):
        low = name.lower()
        if low in EMAIL_HEADERS:
            targets[index] = "email"
        elif low in NAME_HEADERS:
            targets[index] = "name"
        elif name in defs:
            targets[index] = name
        elif low in by_label:
            targets[index] = by_label[low]
    if "email" not in targets:
        for index, cell in enumerate(first_row[:width]):
            if looks_like_email(cell):
                targets[index] = "email"
                break
    return targets


def resolve_columns(
    header: Sequence[str] | None, first_row: Sequence[str], requested: Mapping[str, str], defs: Mapping[str, FieldDef]
) -> list[str]:
    """Target of each column: "email", "name", a custom field key, or "" (skipped)."""
    width = len(header) if header is not None else len(first_row)
    names = [h.strip() for h in header] if header is not None else [""] * width
    if requested:
        targets = [""] * width
        for column, target in requested.items():
            if column.isdigit() and 1 <= int(column) <= width:
                index = int(column) - 1
            elif column.strip() in names:
                index = names.index(column.strip())
            else:
                raise ValueError(f"mapping names column {column!r}, which the file does not have")
            if target not in ("", "email", "name") and target not in defs:
                raise ValueError(f"mapping target {target!r} is not email, name or one of your custom fields")
            targets[index] = target
    else:
        targets = guess_targets(header, first_row, defs)
    if targets.count("email") != 1:
        raise ValueError("exactly one column must be the email address; give a mapping such as {'1': 'email'}")
    return targets


@dataclass(frozen=True)
class Column:
    """One column of a file as a preview shows it."""

    number: int
    first: str
    second: str
    target: str


@dataclass(frozen=True)
class Layout:
    """How a file is read: its codec, delimiter, whether its first row is a header, and its first rows."""

    codec: str
    delimiter: str
    has_header: bool
    # The header row, or None.
    header: list[str] | None
    # The first row of data.
    first_row: list[str]
    # The file's first two rows as they are, header or not.
    rows: list[list[str]]


def read_layout(
    sample: bytes, complete: bool, requested_encoding: str, requested_delimiter: str, header: int
) -> Layout:
    """Decide how to read a file from its first bytes, `complete` when they are the whole file (what a job
    fixes on its first run, and what a preview shows)."""
    codec = choose_encoding(sample, requested_encoding)
    records, _ = split_records(sample, final=complete)
    lines = [r.decode(codec, "replace") for r, _ in records[:50] if r.strip()]
    if not lines:
        raise ValueError("the file holds no rows")
    delimiter, has_header = sniff(lines, requested_delimiter, header)
    rows = list(csv.reader(lines[:2], delimiter=delimiter))
    head = rows[0] if has_header else None
    first = rows[1] if has_header and len(rows) > 1 else rows[0]
    return Layout(codec, delimiter, has_header, head, first, rows)


def preview_columns(layout: Layout, defs: Mapping[str, FieldDef]) -> list[Column]:
    """Each column with its cells in the first two rows and the target it maps to without a mapping."""
    targets = guess_targets(layout.header, layout.first_row, defs)
    first = layout.rows[0] if layout.rows else []
    second = layout.rows[1] if len(layout.rows) > 1 else []
    return [
        Column(i + 1, first[i] if i < len(first) else "", second[i] if i < len(second) else "", target)
        for i, target in enumerate(targets)
    ]


@dataclass
class ParsedRow:
    """A good row, ready for the staging table."""

    row_number: int
    email: str
    name: str
    attributes: dict


@dataclass
class BadRow:
    """A row that cannot be imported and why: in English, and as an explanation_json the console translates."""

    row_number: int
    reason: str
    raw: str
    explanation: str | None = None

    @classmethod
    def of(cls, row_number: int, problem: Exception, raw: str) -> BadRow:
        """A bad row rejected for `problem` (its template kept when it has one)."""
        explained = Problem.of(problem)
        return cls(row_number, str(explained), raw, explanation_json(explained))


@dataclass
class ParsedBatch:
    """Good rows merged by address (later values win), bad rows, and how many records were read."""

    rows: list[ParsedRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


def _cell_reader(definition: FieldDef) -> Callable[[str], Any]:
    """A cell check for one field that settles the common shapes inline and defers the rest to `coerce`.

    Each shortcut accepts only text `coerce` would store unchanged, so both always agree; anything else
    (blanks, other date or number forms, errors and their messages) goes through `coerce` itself.
    """
    slow = partial(coerce, definition)
    if definition.type == "text":

        def text(cell: str) -> Any:
            # Printable text has no control characters; a blank one is stored as nothing.
            if cell.isprintable() and len(cell) <= MAX_TEXT and not cell.isspace():
                return cell
            return slow(cell)

        return text
    if definition.type == "date":

        def iso_date(cell: str) -> Any:
            if len(cell) == 10 and cell[4] == "-" and cell[7] == "-" and cell.isascii():
                try:
                    date.fromisoformat(cell)
                    return cell
                except ValueError:
                    pass
            return slow(cell)

        return iso_date
    if definition.type == "number":

        def number(cell: str) -> Any:
            if cell.isascii() and cell.isdigit() and len(cell) < 16:
                return int(cell)
            return slow(cell)

        return number
    if definition.type == "choice":
        options = frozenset(definition.options)

        def choice(cell: str) -> Any:
            return cell if cell in options else slow(cell)

        return choice
    return slow


def parse_batch(
    records: Sequence[tuple[int, bytes]],
    codec: str,
    delimiter: str,
    targets: Sequence[str],
    defs: Mapping[str, FieldDef],
    done: Sequence[int] = (),
) -> ParsedBatch:
    """Decode, split and check numbered records; duplicates inside the batch are merged.

    With `done` (committed row numbers per writer stream), good rows a stream already committed are left
    out before merging, so a resumed job re-applies none of them.
    """
    last_done = max(done, default=0)
    out = ParsedBatch()
    texts: list[str] = []
    numbers: list[int] = []
    # utf-8-sig is a Python-level codec; plain utf-8 is C. Both drop one leading BOM per call alike.
    fast_codec = "utf-8" if codec == "utf-8-sig" else codec
    for number, raw in records:
        if not raw.strip():
            continue
        try:
            try:
                text = raw.decode(fast_codec)
            except UnicodeDecodeError:
                text = raw.decode(codec)  # the codec's own error, positions and all
            if fast_codec != codec and text.startswith("\ufeff"):
                text = text[1:]
            texts.append(text)
            numbers.append(number)
        except UnicodeDecodeError as exc:
            out.bad.append(
                BadRow.of(
                    number,
                    Problem("bytes at position %(position)s are not %(codec)s text", position=exc.start, codec=codec),
                    raw.decode(codec, "replace")[:MAX_RAW],
                )
            )
    width = len(targets)
    email_at = targets.index("email")
    name_at = targets.index("name") if "name" in targets else -1
    field_cols = [
        (i, defs[t].key, _cell_reader(defs[t])) for i, t in enumerate(targets) if t and t not in ("email", "name")
    ]
    merged: dict[str, ParsedRow] = {}
    for number, text, cells in zip(numbers, texts, csv.reader(texts, delimiter=delimiter), strict=True):
        if len(cells) != width:
            wrong = Problem("expected %(expected)s columns, found %(found)s", expected=width, found=len(cells))
            out.bad.append(BadRow.of(number, wrong, text[:MAX_RAW]))
            continue
        try:
            email = normalize_email(cells[email_at].strip())
            if name_at >= 0:
                name = cells[name_at].strip()
                if not (name.isprintable() and len(name) <= MAX_NAME):
                    name = check_name(name)
            else:
                name = ""
            attributes = {}
            for index, key, read in field_cols:
                cell = cells[index]
                if cell:
                    value = read(cell)
                    if value is not None:
                        attributes[key] = value
        except ValueError as exc:
            out.bad.append(BadRow.of(number, exc, text[:MAX_RAW]))
            continue
        if number <= last_done and number <= done[stream_of(email, len(done))]:
            continue
        key = email.lower()
        earlier = merged.get(key)
        if earlier is None:
            merged[key] = ParsedRow(number, email, name, attributes)
        else:
            earlier.row_number = number
            earlier.name = name or earlier.name
            earlier.attributes.update(attributes)
    out.rows = list(merged.values())
    return out


# Compact JSON for the staging table's jsonb column.
_compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
NULL = "\\N"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(value: str) -> str:
    """A value escaped for COPY's text format."""
    # Four scans in C beat translate's per-character mapping on the usual value with nothing to escape.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


@dataclass
class StagedBatch:
    """A parsed batch as COPY text for the staging table, with its bad rows: cheap to pass between processes."""

    copy_data: bytes
    rows: int
    bad: list[BadRow]


def parse_for_copy(
    records: Sequence[tuple[int, bytes]],
    codec: str,
    delimiter: str,
    targets: Sequence[str],
    defs: Mapping[str, FieldDef],
    hash_key: bytes | None,
) -> StagedBatch:
    """Parse a batch and render its good rows as COPY text (row_number, email, name, attributes, email_hash).

    hash_key, when given, adds the keyed hash of each address (to match erased subscribers' suppressions).
    """
    return parse_for_streams(records, codec, delimiter, targets, defs, hash_key, (0,))[0]


# Non-ASCII characters that some server locale lower-cases to, or from, an ASCII letter: the Kelvin sign
# (to k), dotted capital I (to i), and dotless ı, which a Turkish ctype gives as the lower case of I.
_ASCII_KIN = {"\u212a": "k", "\u0130": "i", "\u0131": "i"}


def stream_key(email: str) -> str:
    """The part of an address that decides its writer stream: equal under any server lower() means equal here.

    Non-ASCII characters are left out, except those whose case mapping meets an ASCII letter in some
    locale; they count as that letter. So case-folding differences between Python and the server (or
    the server's ctype) can never send one address to two streams.
    """
    if email.isascii():
        return email.lower()
    return "".join(c.lower() if c.isascii() else _ASCII_KIN.get(c, "") for c in email)


def stream_of(email: str, streams: int) -> int:
    """The writer stream an address belongs to: addresses equal under PostgreSQL's lower() share one.

    crc32 of the stream key, not hash(), so every process and every run agrees.
    """
    return zlib.crc32(stream_key(email).encode()) % streams


def parse_for_streams(
    records: Sequence[tuple[int, bytes]],
    codec: str,
    delimiter: str,
    targets: Sequence[str],
    defs: Mapping[str, FieldDef],
    hash_key: bytes | None,
    done: Sequence[int],
) -> list[StagedBatch]:
    """Parse a batch and split it into one StagedBatch per writer stream (len(done) of them).

    Each stream gets the rows of its addresses (bad rows by row number) after its committed row number
    `done[s]`, so a resumed job re-applies nothing a stream already committed.
    """
    streams = len(done)
    parsed = parse_batch(records, codec, delimiter, targets, defs, done)
    lines: list[list[str]] = [[] for _ in range(streams)]
    counts = [0] * streams
    hash_of = email_hasher(hash_key) if hash_key is not None else None
    for r in parsed.rows:
        s = stream_of(r.email, streams)
        h = hash_of(r.email) if hash_of is not None else NULL
        lines[s].append(
            f"{r.row_number}\t{copy_text(r.email)}\t{copy_text(r.name)}\t{copy_text(_compact_json(r.attributes))}\t{h}\n"
        )
        counts[s] += 1
    bad: list[list[BadRow]] = [[] for _ in range(streams)]
    for b in parsed.bad:
        s = b.row_number % streams
        if b.row_number > done[s]:
            bad[s].append(b)
    return [StagedBatch("".join(lines[s]).encode(), counts[s], bad[s]) for s in range(streams)]
