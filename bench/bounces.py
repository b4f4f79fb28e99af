"""`make bench-bounces`: how well `parse_bounce` agrees with a labelled corpus of real returned messages.

The corpus is a folder with `labels.jsonl` and the messages it names (the layout of shared/corpora/bounces
and of tests/data/bounces): per message its kind and, per failed recipient, the address, whether it is
hard and (Sisimai's labels) the reason. Prints four rates: bounced addresses found, hard/soft agreement,
exact reason agreement and kind agreement, then the same per source corpus and per reason, and the misses.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from services.bounce.dsn import parse_bounce

ROOT = Path(__file__).resolve().parents[1]
# The shared corpus beside the project's checkout; the copy in the tests when that is not there.
DEFAULT_CORPORA = (ROOT.parent / "shared" / "corpora" / "bounces", ROOT / "tests" / "data" / "bounces")


@dataclass
class Rate:
    """Agreements out of comparisons."""

    ok: int = 0
    total: int = 0

    def add(self, agreed: bool) -> None:
        """Count one comparison."""
        self.total += 1
        self.ok += bool(agreed)

    @property
    def ratio(self) -> float:
        """The share that agreed (1.0 when nothing was compared)."""
        return self.ok / self.total if self.total else 1.0

    def __str__(self) -> str:
        return f"{100 * self.ratio:5.1f}% ({self.ok}/{self.total})"


@dataclass
class Score:
    """The agreement of the parser with one corpus, overall, per source and per reason."""

    found: Rate = field(default_factory=Rate)
    hard: Rate = field(default_factory=Rate)
    reason: Rate = field(default_factory=Rate)
    kind: Rate = field(default_factory=Rate)
    hard_by_source: dict[str, Rate] = field(default_factory=dict)
    by_reason: dict[str, Rate] = field(default_factory=dict)
    confusion: Counter = field(default_factory=Counter)
    # Labelled hard where we name a reason Sisimai counts as soft: the two definitions disagree there.
    definition_conflicts: Counter = field(default_factory=Counter)
    cpu_seconds: float = 0.0
    messages: int = 0
    misses: list[str] = field(default_factory=list)


def _source(file: str) -> str:
    parts = Path(file).parts
    return parts[1] if len(parts) > 2 else "corpus"


def labelled(corpus: Path) -> list[dict]:
    """The corpus's labels, one dict per message."""
    lines = (corpus / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def score(corpus: Path) -> Score:
    """Parse every labelled message of a corpus and compare with its labels."""
    result = Score()
    for row in labelled(corpus):
        name = row["file"]
        raw = (corpus / name).read_bytes()
        started = time.process_time()
        report = parse_bounce(raw)
        result.cpu_seconds += time.process_time() - started
        result.messages += 1
        if row.get("kind"):
            result.kind.add(report.kind == row["kind"])
            if report.kind != row["kind"]:
                result.misses.append(f"{name}: kind {report.kind}, labelled {row['kind']}")
        if not row.get("is_bounce") and row.get("kind") != "feedback-report":
            continue
        mine = {r.email: r for r in report.recipients}
        for record in row.get("records") or []:
            address = record["recipient"].lower()
            got = mine.get(address)
            result.found.add(got is not None)
            if got is None:
                result.misses.append(f"{name}: {address} not found (found {sorted(mine)})")
                continue
            if record.get("hard") is not None and record.get("reason") != "feedback":
                agreed = (got.kind == "hard") == record["hard"]
                result.hard.add(agreed)
                result.hard_by_source.setdefault(_source(name), Rate()).add(agreed)
                if not agreed and record["hard"] and not record.get("reason"):
                    result.definition_conflicts[got.reason] += 1
                if not agreed:
                    labelled_kind = "hard" if record["hard"] else "soft"
                    result.misses.append(
                        f"{name}: {address} {got.kind} ({got.reason} {got.status}), labelled {labelled_kind}"
                    )
            if record.get("reason"):
                agreed = got.reason == record["reason"]
                result.reason.add(agreed)
                result.by_reason.setdefault(record["reason"], Rate()).add(agreed)
                if not agreed:
                    result.confusion[(record["reason"], got.reason)] += 1
                    result.misses.append(f"{name}: {address} reason {got.reason}, labelled {record['reason']}")
    return result


# One expectation of p5-sisimai's test suite: 'NN' => [['status', 'replycode', 'reason', hard], ...].
_SUITE_ENTRY = re.compile(r"'(\d+)'\s*=>\s*\[(.*?)\],\s*\n(?=\s*'\d+'|\s*\};)", re.S)
_SUITE_RECORD = re.compile(r"\[\s*'([^']*)',\s*'([^']*)',\s*'([^']*)',\s*(\d)")


def score_sisimai_suite(root: Path, skip: set[str]) -> Score:
    """Compare with p5-sisimai's own expectations (t/*.t) for its set-of-emails/maildir/bsd messages.

    The suite names no recipient, so its records are compared in order with ours. Messages whose
    names are in `skip` (those of the labelled corpus) are left out, so the figures are out of sample.
    """
    result = Score()
    mails = root / "set-of-emails" / "maildir" / "bsd"
    for test in sorted((root / "t").glob("*.t")):
        source = test.read_text(encoding="utf-8", errors="replace")
        engine = re.search(r"my \$enginename = '([^']+)'", source)
        if not engine or "isexpected" not in source:
            continue
        prefix = "rhost-" if "-rhost-" in test.name else "lhost-" if "-lhost-" in test.name else ""
        for entry in _SUITE_ENTRY.finditer(source[source.index("isexpected") :]):
            path = mails / f"{prefix}{engine.group(1).lower()}-{int(entry.group(1)):02d}.eml"
            if not path.exists() or path.name in skip:
                continue
            raw = path.read_bytes()
            started = time.process_time()
            mine = parse_bounce(raw).recipients
            result.cpu_seconds += time.process_time() - started
            result.messages += 1
            for at, (_status, _reply, reason, hard) in enumerate(_SUITE_RECORD.findall(entry.group(2))):
                got = mine[at] if at < len(mine) else None
                result.found.add(got is not None)
                if got is None:
                    result.misses.append(f"{path.name}: record {at + 1} not found")
                    continue
                if reason not in ("feedback", "vacation", "delivered"):
                    result.hard.add((got.kind == "hard") == (hard == "1"))
                result.reason.add(got.reason == reason)
                result.by_reason.setdefault(reason, Rate()).add(got.reason == reason)
                if got.reason != reason:
                    result.confusion[(reason, got.reason)] += 1
                    result.misses.append(f"{path.name}: record {at + 1} reason {got.reason}, expected {reason}")
    return result


def score_flufl_suite(root: Path, skip: set[str]) -> Score:
    """Compare with flufl.bounce's own test expectations (tests/test_detectors.py DETECTORS, tests/data).

    Each entry names the bounced addresses and whether the failure is temporary; flufl calls every
    permanent failure hard, so its hard/soft is shown for what it is, not as our definition.
    """
    result = Score()
    source = (root / "test_detectors.py").read_text(encoding="utf-8")
    start = source.index("DETECTORS = [")
    table = ast.literal_eval(source[source.index("[", start) : source.index("\n]\n", start) + 2])
    for _detector, name, addresses, temporary in table:
        if name in skip or not addresses:
            continue
        raw = (root / "data" / name).read_bytes()
        started = time.process_time()
        mine = {r.email: r for r in parse_bounce(raw).recipients}
        result.cpu_seconds += time.process_time() - started
        result.messages += 1
        for address in addresses:
            got = mine.get(address.decode().lower())
            result.found.add(got is not None)
            if got is None:
                result.misses.append(f"{name}: {address.decode()} not found (found {sorted(mine)})")
                continue
            agreed = (got.kind == "hard") != temporary
            result.hard.add(agreed)
            if not agreed and not temporary:
                result.definition_conflicts[got.reason] += 1
    return result


def main(argv: list[str] | None = None) -> int:
    """Print the agreement rates of the corpus given (or the shared one) and the misses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, help="folder with labels.jsonl (default: shared corpus)")
    parser.add_argument("--misses", action="store_true", help="list every disagreement")
    parser.add_argument(
        "--sisimai-suite",
        type=Path,
        metavar="P5_SISIMAI",
        help="also compare with p5-sisimai's test expectations (a checkout of sisimai/p5-sisimai), "
        "leaving out the messages of the corpus",
    )
    parser.add_argument(
        "--flufl-suite",
        type=Path,
        metavar="TESTS",
        help="also compare with flufl.bounce's test expectations (the tests/ folder of its source "
        "distribution), leaving out the messages of the corpus",
    )
    args = parser.parse_args(argv)
    corpus = args.corpus or next((c for c in DEFAULT_CORPORA if (c / "labels.jsonl").exists()), None)
    if corpus is None or not (corpus / "labels.jsonl").exists():
        print(f"no labels.jsonl in {corpus or ' or '.join(map(str, DEFAULT_CORPORA))}", file=sys.stderr)
        return 2
    s = score(corpus)
    print(f"corpus: {corpus}")
    print(f"bounced address found   {s.found}")
    print(f"hard/soft agreement     {s.hard}")
    for source, rate in sorted(s.hard_by_source.items()):
        print(f"  {source:<21} {rate}")
    if s.definition_conflicts:
        conflicts = sum(s.definition_conflicts.values())
        detail = ", ".join(f"{reason} {n}" for reason, n in s.definition_conflicts.most_common())
        agreed = Rate(s.hard.ok, s.hard.total - conflicts)
        print(f"  labelled hard without a reason, a soft reason by Sisimai's definition: {conflicts} ({detail})")
        print(f"  hard/soft without those {agreed}")
    print(f"exact reason agreement  {s.reason}")
    print(f"kind agreement          {s.kind}")
    print(f"parse_bounce CPU        {1000 * s.cpu_seconds / max(s.messages, 1):.2f} ms per message ({s.messages})")
    print("per reason (Sisimai's labels):")
    for reason, rate in sorted(s.by_reason.items(), key=lambda kv: (kv[1].ratio, kv[0])):
        print(f"  {reason:<21} {rate}")
    if s.confusion:
        print("reason confusions (labelled -> ours):")
        for (want, got), n in s.confusion.most_common():
            print(f"  {want} -> {got or '(none)'}: {n}")
    if args.misses:
        print("misses:")
        print("\n".join(f"  {m}" for m in s.misses))
    if args.sisimai_suite:
        skip = {Path(row.get("upstream_path", row["file"])).name for row in labelled(corpus)}
        out = score_sisimai_suite(args.sisimai_suite, skip)
        print(f"p5-sisimai's own expectations, {out.messages} messages not in the corpus:")
        print(f"  records found         {out.found}")
        print(f"  hard/soft agreement   {out.hard}")
        print(f"  exact reason          {out.reason}")
        if args.misses:
            print("\n".join(f"  {m}" for m in out.misses))
    if args.flufl_suite:
        skip = {Path(row.get("upstream_path", row["file"])).name for row in labelled(corpus)}
        out = score_flufl_suite(args.flufl_suite, skip)
        conflicts = sum(out.definition_conflicts.values())
        detail = ", ".join(f"{reason} {n}" for reason, n in out.definition_conflicts.most_common())
        print(f"flufl.bounce's own expectations, {out.messages} messages not in the corpus:")
        print(f"  addresses found       {out.found}")
        print(
            f"  hard/soft agreement   {out.hard} (permanent there, a soft reason by Sisimai's: {conflicts}: {detail})"
        )
        if args.misses:
            print("\n".join(f"  {m}" for m in out.misses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
