"""The `mailblast` command: lists, subscribers and campaigns over the same gRPC APIs the console uses."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from mailblast.v1 import campaigns_pb2, campaigns_pb2_grpc, lists_pb2, lists_pb2_grpc

IMPORT_CHUNK = 1000
_FINISHED = {campaigns_pb2.CAMPAIGN_STATE_SENT, campaigns_pb2.CAMPAIGN_STATE_CANCELLED}


class CliError(Exception):
    """Something the user should fix; printed without a traceback."""


def _run_file() -> Path:
    return Path(os.environ.get("MAILBLAST_RUN_FILE") or Path(os.environ.get("MAILBLAST_VAR_DIR", "var")) / "run.json")


def _address(service: str) -> str:
    """Where a service listens: MAILBLAST_<SERVICE>_ADDR, else what `make run` wrote to var/run.json."""
    given = os.environ.get(f"MAILBLAST_{service.upper()}_ADDR")
    if given:
        return given
    path = _run_file()
    if path.exists():
        data = json.loads(path.read_text())
        for section in (data, data.get("endpoints", {}), data.get("services", {})):
            value = section.get(service) if isinstance(section, dict) else None
            if isinstance(value, dict):
                value = value.get("addr") or value.get("address")
            if isinstance(value, str) and value:
                return value
    raise CliError(f"don't know where the {service} service is: set MAILBLAST_{service.upper()}_ADDR or run `make run`")


class Client:
    """gRPC stubs with the caller's API token on every call."""

    def __init__(self, token: str) -> None:
        if not token:
            raise CliError("no API token: pass --token or set MAILBLAST_TOKEN (make run prints one on first start)")
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.lists = lists_pb2_grpc.ListsServiceStub(grpc.insecure_channel(_address("lists")))
        self.campaigns = campaigns_pb2_grpc.CampaignsServiceStub(grpc.insecure_channel(_address("campaigns")))

    def call(self, method, request):
        """Call one RPC; turn a refusal into a CliError with the server's explanation."""
        try:
            return method(request, metadata=self._metadata, timeout=120)
        except grpc.RpcError as exc:
            raise CliError(f"{exc.code().name.lower().replace('_', ' ')}: {exc.details()}") from None


def _show(message, as_json: bool) -> None:
    data = MessageToDict(message, preserving_proto_field_name=True)
    print(json.dumps(data, ensure_ascii=False, indent=None if as_json else 2))


def read_csv_rows(path: Path) -> Iterator[tuple[int, lists_pb2.SubscriberInput | str]]:
    """Yield (line number, subscriber) per data row, or (line number, error text) for a row that can't be used.

    The file needs a header with an `email` column; `name` is optional; every other column becomes a
    personal field of the subscriber.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise CliError(f"{path}: the file is empty")
    columns = [h.strip().lower() for h in header]
    if "email" not in columns:
        raise CliError(f"{path}: the header has no 'email' column (found: {', '.join(header)})")
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            yield line, f"expected {len(columns)} columns, found {len(row)}"
            continue
        values = dict(zip(columns, row, strict=True))
        attributes = {k: v for k, v in zip(header, row, strict=True) if k.strip().lower() not in ("email", "name")}
        yield (
            line,
            lists_pb2.SubscriberInput(
                email=values["email"].strip(),
                name=values.get("name", "").strip(),
                attributes_json=json.dumps(attributes, ensure_ascii=False) if attributes else "",
            ),
        )


def _chunks(rows: Iterator[tuple[int, object]], size: int) -> Iterator[list[tuple[int, object]]]:
    chunk: list[tuple[int, object]] = []
    for item in rows:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def cmd_import(client: Client, args: argparse.Namespace) -> int:
    """Import a CSV into a list, reporting every bad row by line number."""
    added = updated = 0
    errors: list[str] = []
    for chunk in _chunks(read_csv_rows(Path(args.file)), IMPORT_CHUNK):
        good = [(line, sub) for line, sub in chunk if not isinstance(sub, str)]
        errors.extend(f"row {line}: {sub}" for line, sub in chunk if isinstance(sub, str))
        if not good:
            continue
        reply = client.call(
            client.lists.AddSubscribers,
            lists_pb2.AddSubscribersRequest(list_id=args.list_id, subscribers=[sub for _, sub in good]),
        )
        added += reply.added
        updated += reply.updated
        errors.extend(f"row {good[e.index][0]}: {e.message}" for e in reply.errors)
    print(f"imported: {added} added, {updated} updated, {len(errors)} rejected")
    for line in errors:
        print(f"  {line}", file=sys.stderr)
    return 0 if not errors else 2


def _read_body(path: str | None) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def cmd_campaign_create(client: Client, args: argparse.Namespace) -> int:
    """Create a draft campaign."""
    reply = client.call(
        client.campaigns.CreateCampaign,
        campaigns_pb2.CreateCampaignRequest(
            name=args.name,
            list_ids=args.list,
            from_name=args.from_name or "",
            from_address=args.from_address,
            reply_to=args.reply_to or "",
            subject=args.subject,
            html_body=_read_body(args.html),
            text_body=_read_body(args.text),
        ),
    )
    _show(reply, args.json)
    return 0


def _progress(campaign: campaigns_pb2.Campaign) -> str:
    c = campaign.counters
    state = campaigns_pb2.CampaignState.Name(campaign.state).removeprefix("CAMPAIGN_STATE_").lower()
    return (
        f"campaign {campaign.id} {state}: total {c.total}  queued {c.queued}  sent {c.sent}  "
        f"deferred {c.deferred}  bounced {c.bounced}  failed {c.failed}"
    )


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    """Print a campaign's counters until it is sent or cancelled (or the timeout passes)."""
    deadline = time.monotonic() + args.timeout
    last = ""
    while True:
        campaign = client.call(client.campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=args.id))
        line = _progress(campaign)
        if line != last:
            print(line, flush=True)
            last = line
        if campaign.state in _FINISHED and campaign.counters.queued == 0 and campaign.counters.deferred == 0:
            return 0
        if time.monotonic() > deadline:
            print(f"still {line} after {args.timeout:.0f}s", file=sys.stderr)
            return 3
        time.sleep(args.interval)


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    p = argparse.ArgumentParser(prog="mailblast", description=__doc__)
    p.add_argument("--token", default=os.environ.get("MAILBLAST_TOKEN", ""), help="API token (or MAILBLAST_TOKEN)")
    p.add_argument("--json", action="store_true", help="print compact JSON")
    sub = p.add_subparsers(dest="area", required=True)

    lists = sub.add_parser("lists", help="mailing lists").add_subparsers(dest="cmd", required=True)
    c = lists.add_parser("create", help="create a list")
    c.add_argument("name")
    c.add_argument("--description", default="")
    lists.add_parser("ls", help="show the lists")
    c = lists.add_parser("import", help="import subscribers from a CSV with an email column")
    c.add_argument("list_id", type=int)
    c.add_argument("file")
    c = lists.add_parser("subscribers", help="show a list's subscribers")
    c.add_argument("list_id", type=int)
    c.add_argument("--limit", type=int, default=100)

    camps = sub.add_parser("campaigns", help="campaigns").add_subparsers(dest="cmd", required=True)
    c = camps.add_parser("create", help="create a draft campaign")
    c.add_argument("--name", required=True)
    c.add_argument("--list", type=int, action="append", required=True, help="list id (repeatable)")
    c.add_argument("--from", dest="from_address", required=True)
    c.add_argument("--from-name", default="")
    c.add_argument("--reply-to", default="")
    c.add_argument("--subject", required=True, help="may use personal fields, e.g. '{{ name }}様へ'")
    c.add_argument("--html", help="file with the HTML body")
    c.add_argument("--text", help="file with the text body")
    camps.add_parser("ls", help="show the campaigns")
    for name in ("show", "send", "pause", "resume", "cancel"):
        camps.add_parser(name, help=f"{name} a campaign").add_argument("id", type=int)
    c = camps.add_parser("watch", help="follow a campaign's counters until it is done")
    c.add_argument("id", type=int)
    c.add_argument("--interval", type=float, default=1.0)
    c.add_argument("--timeout", type=float, default=3600.0)
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status."""
    args = build_parser().parse_args(argv)
    client = Client(args.token)
    if args.area == "lists":
        if args.cmd == "create":
            req = lists_pb2.CreateListRequest(name=args.name, description=args.description)
            _show(client.call(client.lists.CreateList, req), args.json)
        elif args.cmd == "ls":
            _show(client.call(client.lists.ListLists, lists_pb2.ListListsRequest()), args.json)
        elif args.cmd == "import":
            return cmd_import(client, args)
        elif args.cmd == "subscribers":
            req = lists_pb2.ListSubscribersRequest(list_id=args.list_id, page_size=args.limit)
            _show(client.call(client.lists.ListSubscribers, req), args.json)
        return 0
    if args.cmd == "create":
        return cmd_campaign_create(client, args)
    if args.cmd == "ls":
        _show(client.call(client.campaigns.ListCampaigns, campaigns_pb2.ListCampaignsRequest()), args.json)
        return 0
    if args.cmd == "watch":
        return cmd_watch(client, args)
    rpc = {
        "show": (client.campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest),
        "send": (client.campaigns.SendCampaign, campaigns_pb2.SendCampaignRequest),
        "pause": (client.campaigns.PauseCampaign, campaigns_pb2.CampaignRequest),
        "resume": (client.campaigns.ResumeCampaign, campaigns_pb2.CampaignRequest),
        "cancel": (client.campaigns.CancelCampaign, campaigns_pb2.CampaignRequest),
    }[args.cmd]
    campaign = client.call(rpc[0], rpc[1](campaign_id=args.id))
    if args.cmd == "show":
        _show(campaign, args.json)
    else:
        print(_progress(campaign))
    return 0


def main() -> None:
    """Entry point of the `mailblast` command."""
    try:
        sys.exit(run())
    except CliError as exc:
        print(f"mailblast: {exc}", file=sys.stderr)
        sys.exit(1)
