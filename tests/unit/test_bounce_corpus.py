"""parse_bounce against 193 real, labelled returned messages (Sisimai and flufl.bounce corpora)."""

from __future__ import annotations

import json
from pathlib import Path

from services.bounce.dsn import BOUNCE, DELIVERED_DSN, parse_bounce

DATA = Path(__file__).resolve().parents[1] / "data" / "bounces"


def _labelled() -> list[dict]:
    rows = [json.loads(line) for line in (DATA / "labels.jsonl").read_text().splitlines() if line.strip()]
    # Two flufl files are labelled only as "no detector finds anything": no kind to compare.
    return [row for row in rows if row["kind"] is not None]


def test_corpus_kinds_recipients_and_hard_soft():
    # Every labelled message is parsed on its own (none is addressed to our VERP addresses): the kind
    # (bounce, feedback report, auto-reply, not a bounce), the failed recipients and hard/soft must
    # agree with the labels. A DSN whose only Action is "delayed" is deliberately not a bounce here
    # (Sisimai counts it as "expired"), so it is expected as a delivered-dsn with the same recipients.
    kinds = kinds_ok = found = found_ok = graded = graded_ok = reasons = reasons_ok = 0
    misses: list[str] = []
    for row in _labelled():
        report = parse_bounce((DATA / row["file"]).read_bytes())
        expected = row["kind"]
        if expected == BOUNCE and report.recipients and all(r.action == "delayed" for r in report.recipients):
            expected = DELIVERED_DSN
        kinds += 1
        kinds_ok += report.kind == expected
        if report.kind != expected:
            misses.append(f"{row['file']}: kind {report.kind}, labelled {expected}")
        if not row["is_bounce"]:
            continue
        got = {r.email for r in report.recipients}
        found += 1
        if {r.lower() for r in row["recipients"]} <= got:
            found_ok += 1
        else:
            misses.append(f"{row['file']}: recipients {sorted(got)}, labelled {row['recipients']}")
        for record in row["records"]:
            if record["hard"] is None:
                continue
            graded += 1
            mine = [r for r in report.recipients if r.email == record["recipient"].lower()]
            if mine and (mine[0].kind == "hard") == record["hard"]:
                graded_ok += 1
            if record["reason"]:
                # Sisimai's labels name the reason too; flufl's do not.
                reasons += 1
                reasons_ok += bool(mine) and mine[0].reason == record["reason"]
    kind_rate, found_rate, hard_rate = kinds_ok / kinds, found_ok / found, graded_ok / graded
    reason_rate = reasons_ok / reasons
    print(
        f"kinds {kinds_ok}/{kinds}, recipients {found_ok}/{found}, hard/soft {graded_ok}/{graded}, "
        f"reasons {reasons_ok}/{reasons}"
    )
    print("\n".join(misses))
    # The rates reached on this set when the test was written; a change that lowers them is a regression.
    assert kind_rate >= 0.99, misses
    assert found_rate >= 0.94, misses
    assert hard_rate >= 0.77, misses
    assert reason_rate >= 0.63, misses
