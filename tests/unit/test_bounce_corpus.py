"""parse_bounce against 193 real, labelled returned messages (Sisimai and flufl.bounce corpora)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.bounces import score
from services.bounce.classify import HARD_REASONS, REASONS
from services.bounce.dsn import parse_bounce

DATA = Path(__file__).resolve().parents[1] / "data" / "bounces"

# The rates reached on this set when the rules were last changed: a change that lowers one is a
# regression. Hard/soft follows Sisimai's definition, which 17 flufl.bounce labels contradict (flufl
# calls every permanent failure hard; see DEVELOPERS.md, "Bounce classification").
MINIMUM = {"found": 0.975, "hard": 0.869, "reason": 0.93, "kind": 1.0}
# Per Sisimai reason with at least three labelled recipients: the share we name the same way.
REASON_MINIMUM = {
    "authfailure": 1.0,
    "blocked": 0.75,
    "expired": 1.0,
    "feedback": 1.0,
    "filtered": 0.6,
    "hasmoved": 1.0,
    "hostunknown": 1.0,
    "mailboxfull": 0.9,
    "networkerror": 1.0,
    "policyviolation": 1.0,
    "rejected": 1.0,
    "requireptr": 1.0,
    "securityerror": 0.66,
    "spamdetected": 1.0,
    "suspend": 1.0,
    "systemerror": 1.0,
    "userunknown": 1.0,
}


@pytest.fixture(scope="module")
def corpus_score():
    """Every labelled message parsed once and compared with its labels."""
    return score(DATA)


def test_corpus_rates_do_not_regress(corpus_score):
    # Over the whole corpus: bounced addresses found, hard/soft, exact Sisimai reason and the kind of
    # report (bounce, feedback-report, auto-reply, delivered-dsn, not-bounce) must stay where they are.
    s = corpus_score
    misses = "\n".join(s.misses)
    assert s.found.ratio >= MINIMUM["found"], misses
    assert s.hard.ratio >= MINIMUM["hard"], misses
    assert s.reason.ratio >= MINIMUM["reason"], misses
    assert s.kind.ratio >= MINIMUM["kind"], misses
    # Sisimai's own labels and ours agree on hard/soft nearly always: that is the definition we follow.
    assert s.hard_by_source["sisimai"].ratio >= 0.95, misses


def test_each_common_reason_keeps_its_agreement(corpus_score):
    # A rule change that trades one reason for another shows here even when the total stays the same.
    low = {
        reason: str(corpus_score.by_reason[reason])
        for reason, minimum in REASON_MINIMUM.items()
        if corpus_score.by_reason[reason].ratio < minimum
    }
    assert not low, low


def _labels() -> dict[str, dict]:
    lines = (DATA / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["file"]: row for row in map(json.loads, filter(None, lines))}


# One message per common MTA, provider and report format (and a DSN whose MIME boundary is gone).
PINNED = [
    "sisimai/lhost-postfix-03.eml", "sisimai/lhost-postfix-10.eml", "sisimai/lhost-sendmail-01.eml",
    "sisimai/lhost-exim-05.eml", "sisimai/lhost-exim-29.eml", "sisimai/lhost-qmail-01.eml",
    "sisimai/lhost-courier-02.eml", "sisimai/lhost-gmail-09.eml", "sisimai/lhost-office365-11.eml",
    "sisimai/lhost-exchange2007-04.eml", "sisimai/lhost-amazonses-03.eml", "sisimai/lhost-yahoo-01.eml",
    "sisimai/lhost-mailru-01.eml", "sisimai/lhost-messagingserver-01.eml", "sisimai/lhost-opensmtpd-06.eml",
    "sisimai/lhost-googlegroups-04.eml", "sisimai/rhost-apple-01.eml", "sisimai/rhost-kddi-01.eml",
    "sisimai/rfc3464-06.eml", "sisimai/arf-02.eml", "sisimai/rfc3834-01.eml", "sisimai/not-is-not-bounce-01.eml",
    "flufl/qmail_04.eml", "flufl/simple_03.eml", "flufl/dsn_05.eml",
]  # fmt: skip


@pytest.mark.parametrize("name", PINNED)
def test_pinned_sample(name):
    # Each pinned message gives the labelled kind, every labelled recipient, Sisimai's reason for it
    # and hard/soft as labelled.
    row = _labels()[f"eml/{name}"]
    report = parse_bounce((DATA / "eml" / name).read_bytes())
    assert report.kind == row["kind"]
    got = {r.email: r for r in report.recipients}
    for record in row["records"]:
        mine = got[record["recipient"].lower()]
        if record["reason"]:
            assert mine.reason == record["reason"]
        if record["hard"] is not None and record["reason"] != "feedback":
            assert (mine.kind == "hard") == record["hard"]
        elif record["reason"] == "feedback":
            assert mine.kind == "complaint"


def test_dsn_without_its_mime_boundary_is_read_and_the_damage_recorded():
    # A multipart/report whose boundary never occurs is read as text: its RFC 3464 fields still give
    # the recipient and status, and the report says what was wrong with the message.
    report = parse_bounce((DATA / "eml" / "sisimai" / "rfc3464-06.eml").read_bytes())
    assert [r.email for r in report.recipients] == ["kijitora@example.net"]
    assert report.problems and "without its boundary" in report.problems[0]


def test_unreadable_input_is_a_report_with_its_problem_never_an_exception():
    # Whatever arrives, parse_bounce returns; what it could not read is named in the report. A header
    # with raw 8-bit bytes (which Python's parser hands over as a Header object) is read like any other.
    report = parse_bounce(b"\xff\xfe\x00garbage without headers\r\n\r\n--")
    assert report.kind == "not-bounce"
    eight_bit = parse_bounce(
        b"Return-Path: <\xe3\x81\x82@example.jp>\r\nFrom: someone@example.jp\r\nSubject: hello\r\n\r\n"
        b"Just a letter.\r\n"
    )
    assert (eight_bit.kind, eight_bit.problems) == ("not-bounce", ())
    broken = parse_bounce(
        b"From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="gone"\r\n\r\n'
        b"Final-Recipient: rfc822; lost@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    )
    assert [(r.email, r.kind, r.reason) for r in broken.recipients] == [("lost@example.org", "hard", "userunknown")]
    assert any("without its boundary" in p for p in broken.problems)


def test_cli_prints_one_json_line_per_file(capsys, tmp_path):
    # `mailblast bounce parse` needs no service: one JSON line per file, in order, with the fields the
    # issue names; a file that cannot be read gets a line saying so and a non-zero exit.
    from cli.main import run

    files = [DATA / "eml" / "sisimai" / "lhost-exim-05.eml", DATA / "eml" / "sisimai" / "arf-02.eml"]
    missing = tmp_path / "gone.eml"
    assert run(["bounce", "parse", *map(str, files), str(missing)]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    labels = _labels()
    assert [line["file"] for line in lines] == [*map(str, files), str(missing)]
    for line, path in zip(lines, files, strict=False):
        row = labels[f"eml/sisimai/{path.name}"]
        assert (line["kind"], line["is_bounce"]) == (row["kind"], row["is_bounce"])
        assert [r["recipient"] for r in line["records"]] == row["recipients"]
        assert set(line["records"][0]) == {"recipient", "reason", "hard", "status", "replycode"}
        assert line["records"][0]["reason"] == row["records"][0]["reason"]
    assert "cannot read the file" in lines[2]["error"]


def test_every_reason_given_is_one_of_sisimais():
    # Whatever the message, the reason is one of Sisimai's names (as the lists service shows them),
    # and only Sisimai's four "address is gone" reasons are ever hard.
    for path in sorted((DATA / "eml").rglob("*.eml")):
        for result in parse_bounce(path.read_bytes()).recipients:
            assert result.reason in REASONS | {"delivered"}, (path.name, result.reason)
            if result.kind == "hard":
                assert result.reason in HARD_REASONS, (path.name, result.reason)
