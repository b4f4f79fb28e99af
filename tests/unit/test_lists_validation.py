"""The lists service's rules for rows and bounces, without any server."""

import pytest

from services.common.errors import InvalidArgument
from services.lists import validation
from services.lists.bounces import Bounce, BounceKind, apply, reason_text
from services.lists.validation import SubscriberRow, check_attributes, check_rows


def test_rows_split_into_valid_and_problems():
    # Good rows are normalised, bad ones reported by position with the offending value, and a repeated
    # address (whatever its case) keeps its last valid row.
    valid, problems = check_rows(
        [
            SubscriberRow("A@Example.ORG", "First"),
            SubscriberRow("foo@"),
            SubscriberRow("a@example.org", "Second", '{"plan": "gold"}'),
            SubscriberRow("b@example.org", "Bob\nBcc: x@example.net"),
            SubscriberRow(""),
        ]
    )
    assert [(v.index, v.email, v.name, v.attributes_json) for v in valid] == [
        (2, "a@example.org", "Second", '{"plan":"gold"}')
    ]
    assert [(p.index, p.email) for p in problems] == [(1, "foo@"), (3, "b@example.org"), (4, "")]
    assert problems[0].message.startswith("'foo@' is not an email address: ")
    assert "line break" in problems[1].message
    assert "empty" in problems[2].message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[1]", "JSON object"),
        ("{", "not valid JSON"),
        ('{"1abc": 1}', "'1abc'"),
        ('{"' + "k" * 65 + '": 1}', "at most 64"),
        ('{"x": "a\\u0000b"}', "attribute 'x'"),
        ('{"x": ["ok", {"y": "line\\r\\nbreak"}]}', "attribute 'x'"),
        ('{"x": NaN}', "NaN"),
    ],
)
def test_bad_attributes_refused(text: str, words: str):
    # Attributes must be a JSON object with plain names and one-line strings, at any depth.
    with pytest.raises(ValueError, match=words):
        check_attributes(text)


def test_good_attributes_canonical():
    # Empty means no attributes; Unicode and nested values survive, written compactly.
    assert check_attributes("") == "{}"
    assert check_attributes('{"city": "東京", "n": 2, "tags": ["a"], "_x": null}') == (
        '{"city":"東京","n":2,"tags":["a"],"_x":null}'
    )


def test_too_many_rows_refused():
    # More than 10,000 rows in one call is refused as a whole, telling the caller to split it.
    with pytest.raises(InvalidArgument, match="send them in parts"):
        check_rows([SubscriberRow("a@example.org")] * (validation.MAX_ROWS + 1))


def _bounce(kind: BounceKind) -> Bounce:
    return Bounce("id", 1, 2, "x@example.org", kind, "5.1.1 550 unknown")


def test_bounce_rules():
    # The third hard bounce stops an active subscriber; an unsubscribed one stays unsubscribed; a soft
    # bounce only records its reason; a complaint marks even a stopped subscriber complained.
    assert apply(_bounce(BounceKind.HARD), "active", 1, "", 3).status == "active"
    stopped = apply(_bounce(BounceKind.HARD), "active", 2, "", 3)
    assert (stopped.status, stopped.hard_bounce_count, stopped.cause) == ("error_stopped", 3, "hard_bounce")
    assert apply(_bounce(BounceKind.HARD), "unsubscribed", 5, "", 3).status == "unsubscribed"
    soft = apply(_bounce(BounceKind.SOFT), "active", 1, "", 3)
    assert (soft.status, soft.hard_bounce_count, soft.last_bounce_reason, soft.cause) == (
        "active",
        1,
        "5.1.1 550 unknown",
        None,
    )
    complaint = apply(_bounce(BounceKind.COMPLAINT), "error_stopped", 3, "old", 3)
    assert (complaint.status, complaint.last_bounce_reason, complaint.cause) == ("complained", "old", "complaint")
    assert reason_text("", 0, "  multi\r\n  line  ") == "multi line"
