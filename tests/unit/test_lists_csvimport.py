"""The CSV import's parsing shortcuts against the general field checks, without any server."""

import pytest

from services.common.privacy import email_hash, email_hasher
from services.lists import csvimport
from services.lists.fields import FieldDef, coerce

DEFS = [
    FieldDef(1, "note", "note", "text", ()),
    FieldDef(2, "birthday", "birthday", "date", ()),
    FieldDef(3, "points", "points", "number", ()),
    FieldDef(4, "plan", "plan", "choice", ("gold", "silver")),
]
CELLS = [
    "x", " padded ", "メモ", "　", " ", "\t", "a\u2028b", "tab\there", "nul\x00", "é" * 1000, "é" * 1001,
    "2000-01-02", "2000-02-30", "2000/01/02", "2000-1-2", " 2000-01-02", "２０００-01-02", "2000-W01-2",
    "20000102", "12", "0012", "1,200", "-5", "1.5", "１２", "9" * 15, "9" * 16, "1e3", "nan",
    "gold", " gold", "Gold", "platinum",
]  # fmt: skip


def outcome(read, cell: str):
    """The stored value, or the error message."""
    try:
        value = read(cell)
        return type(value), value
    except ValueError as exc:
        return "error", str(exc)


@pytest.mark.parametrize("definition", DEFS, ids=lambda d: d.type)
def test_cell_shortcuts_agree_with_coerce(definition: FieldDef):
    # For every field type, the import's inline checks store exactly what the general check stores
    # and refuse with exactly its message, on ordinary and awkward cells alike.
    fast = csvimport._cell_reader(definition)
    for cell in CELLS:
        assert outcome(fast, cell) == outcome(lambda c: coerce(definition, c), cell), cell


def test_copy_rows_escape_and_hash():
    # Parsed rows become COPY text with backslashes escaped, merged duplicates (later values win),
    # bad rows kept with their numbers, a BOM dropped from the first record, and the keyed hash of each
    # address when a key is given.
    records = [
        (1, "\ufeffa@example.org,A\\B,12".encode()),
        (2, b"b@example.org,B,x"),
        (3, b"A@EXAMPLE.org,,13"),
        (4, b"bad@,C,1"),
        (5, b"   "),
    ]
    defs = {"points": DEFS[2]}
    staged = csvimport.parse_for_copy(records, "utf-8-sig", ",", ["email", "name", "points"], defs, b"k" * 32)
    assert staged.rows == 1
    assert [(b.row_number, "not a number" in b.reason or "email" in b.reason) for b in staged.bad] == [
        (2, True),
        (4, True),
    ]
    number, email, name, attributes, hashed = staged.copy_data.decode().rstrip("\n").split("\t")
    assert (number, email, name, attributes) == ("3", "a@example.org", "A\\\\B", '{"points":13}')
    assert hashed == email_hash(b"k" * 32, "a@example.org")


def _simple_lower(c: str) -> str:
    # A server's lower() maps one character to one (libc towlower); Python's full mapping of İ is two.
    return "i" if c == "\u0130" else c.lower()


def _turkish_lower(c: str) -> str:
    # A Turkish ctype lower-cases I to dotless ı.
    return "\u0131" if c == "I" else _simple_lower(c)


@pytest.mark.parametrize("lower", [_simple_lower, _turkish_lower], ids=["default", "turkish"])
def test_addresses_a_server_lower_cases_alike_share_a_writer_stream(lower):
    # Two writer streams must never hold the same subscriber: any character that lower-cases, in the
    # default or a Turkish server locale, to what an ASCII letter lower-cases to must land in the
    # letter's stream. Checked over every Unicode code point.
    letters = {lower(a): a for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}
    kin = []
    for point in range(0x80, 0x110000):
        c = chr(point)
        if 0xD800 <= point <= 0xDFFF or lower(c) not in letters:
            continue
        kin.append(c)
        a = letters[lower(c)]
        assert csvimport.stream_key(f"x{c}y@example.jp") == csvimport.stream_key(f"x{a}y@example.jp"), hex(point)
        for streams in (2, 3, 8):
            assert csvimport.stream_of(f"{c}@例え.jp", streams) == csvimport.stream_of(f"{a}@例え.jp", streams)
    assert "\u212a" in kin and "\u0130" in kin
    assert ("\u0131" in kin) == (lower is _turkish_lower)


def test_the_batch_hasher_gives_the_same_hash_as_the_suppression_list():
    # An erased subscriber's suppression holds email_hash(); an import matches it with the batch hasher.
    key = b"k" * 64
    hash_one = email_hasher(key)
    for address in ("Hanako@Example.JP", " taro@example.jp ", "山田@例え.jp"):
        assert hash_one(address) == email_hash(key, address)
    assert email_hasher(b"other")(address) != hash_one(address)
