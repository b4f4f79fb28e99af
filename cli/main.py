"""The `mailblast` command: lists, subscribers and campaigns over the same gRPC APIs the console uses."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from mailblast.v1 import (
    campaigns_pb2,
    campaigns_pb2_grpc,
    lists_fields_pb2,
    lists_fields_pb2_grpc,
    lists_imports_pb2,
    lists_imports_pb2_grpc,
    lists_pb2,
    lists_pb2_grpc,
    lists_segments_pb2,
    lists_segments_pb2_grpc,
    lists_suppression_pb2,
    lists_suppression_pb2_grpc,
)

from cli import backup, nats_credentials
from services.common import settings
from services.common.bus import inbox_prefix, transactional_subject
from services.common.settings import Setting, setting

IMPORT_CHUNK = 1000
_FINISHED = {campaigns_pb2.CAMPAIGN_STATE_SENT, campaigns_pb2.CAMPAIGN_STATE_CANCELLED}


class CliError(Exception):
    """Something the user should fix; printed without a traceback."""


# The data folder of `make run`, which the command reads too (run.json, NATS keys).
VAR_DIR = Setting(
    "MAILBLAST_VAR_DIR",
    "",
    "where `make run` keeps its data (databases, secrets, logs, `run.json`); unset: `var/` in the project (the "
    "`mailblast` command: `./var`)",
)


@dataclass(frozen=True, kw_only=True)
class CliSettings:
    """What the command reads from the environment; var/run.json, written by `make run`, fills in the rest."""

    token: str = setting("MAILBLAST_TOKEN", "", "the API token the command calls with (`--token` overrides it)")
    lists_addr: str = setting("MAILBLAST_LISTS_ADDR", "", "the lists service; unset: from `run.json`")
    campaigns_addr: str = setting("MAILBLAST_CAMPAIGNS_ADDR", "", "the campaigns service; unset: from `run.json`")
    run_file: str = setting(
        "MAILBLAST_RUN_FILE", "", "the `run.json` of `make run` to read; unset: the one in MAILBLAST_VAR_DIR"
    )
    var_dir: str = VAR_DIR.field()
    # The command's client certificate (identity `cli`); unset: the files var/run.json names.
    tls_ca_file: str = settings.TLS_CA_FILE.field("")
    tls_cert_file: str = settings.TLS_CERT_FILE.field("")
    tls_key_file: str = settings.TLS_KEY_FILE.field("")


def _settings() -> CliSettings:
    return settings.read(CliSettings)


def _var_dir() -> Path:
    return Path(_settings().var_dir or "var")


def _run_file() -> Path:
    return Path(_settings().run_file or _var_dir() / "run.json")


def _run_info() -> dict:
    path = _run_file()
    return json.loads(path.read_text()) if path.exists() else {}


def _address(service: str) -> str:
    """Where a service listens: MAILBLAST_<SERVICE>_ADDR, else what `make run` wrote to var/run.json."""
    given = getattr(_settings(), f"{service}_addr")
    if given:
        return given
    data = _run_info()
    if data:
        for section in (data, data.get("endpoints", {}), data.get("services", {})):
            value = section.get(service) if isinstance(section, dict) else None
            if isinstance(value, dict):
                value = value.get("addr") or value.get("address")
            if isinstance(value, str) and value:
                return value
    raise CliError(f"don't know where the {service} service is: set MAILBLAST_{service.upper()}_ADDR or run `make run`")


def _credentials() -> grpc.ChannelCredentials:
    """The command's client certificate (identity `cli`): MAILBLAST_TLS_*, else the files var/run.json names."""
    recorded = _run_info().get("cli_tls") or {}
    given = _settings()
    paths = {}
    for key, declaration in (
        ("ca_file", settings.TLS_CA_FILE),
        ("cert_file", settings.TLS_CERT_FILE),
        ("key_file", settings.TLS_KEY_FILE),
    ):
        paths[key] = getattr(given, f"tls_{key}") or recorded.get(key)
        if not paths[key]:
            raise CliError(
                f"no client certificate for the services: set {declaration.env} (or run `make run`, which makes one)"
            )
    try:
        ca, chain, key = (Path(paths[k]).read_bytes() for k in ("ca_file", "cert_file", "key_file"))
    except OSError as exc:
        raise CliError(f"cannot read {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)


class Client:
    """gRPC stubs with the caller's API token on every call."""

    def __init__(self, token: str) -> None:
        if not token:
            raise CliError("no API token: pass --token or set MAILBLAST_TOKEN (make run prints one on first start)")
        self._metadata = (("authorization", f"Bearer {token}"),)
        # Mutual TLS: the services take calls only from certificates of the installation's CA.
        credentials = _credentials()
        lists_channel = grpc.secure_channel(_address("lists"), credentials)
        # The lists process serves one gRPC service per sub-domain on one channel.
        self.lists = lists_pb2_grpc.ListsServiceStub(lists_channel)
        self.lists_fields = lists_fields_pb2_grpc.ListsFieldsServiceStub(lists_channel)
        self.lists_imports = lists_imports_pb2_grpc.ListsImportsServiceStub(lists_channel)
        self.lists_segments = lists_segments_pb2_grpc.ListsSegmentsServiceStub(lists_channel)
        self.lists_suppression = lists_suppression_pb2_grpc.ListsSuppressionServiceStub(lists_channel)
        self.campaigns = campaigns_pb2_grpc.CampaignsServiceStub(
            grpc.secure_channel(_address("campaigns"), credentials)
        )

    def call(self, method, request):
        """Call one RPC; turn a refusal into a CliError with the server's explanation."""
        try:
            return method(request, metadata=self._metadata, timeout=120)
        except grpc.RpcError as exc:
            raise CliError(f"{exc.code().name.lower().replace('_', ' ')}: {exc.details()}") from None

    def stream(self, method, request) -> Iterator:
        """Call a server-streaming RPC and yield its messages."""
        try:
            yield from method(request, metadata=self._metadata, timeout=3600)
        except grpc.RpcError as exc:
            raise CliError(f"{exc.code().name.lower().replace('_', ' ')}: {exc.details()}") from None


def _show(message, as_json: bool) -> None:
    data = MessageToDict(message, preserving_proto_field_name=True)
    print(json.dumps(data, ensure_ascii=False, indent=None if as_json else 2))


UPLOAD_CHUNK = 1024 * 1024
_MODES = {
    "add-and-update": lists_imports_pb2.IMPORT_MODE_ADD_AND_UPDATE,
    "add-only": lists_imports_pb2.IMPORT_MODE_ADD_ONLY,
    "update-only": lists_imports_pb2.IMPORT_MODE_UPDATE_ONLY,
}


def _error_rows(client: Client, import_id: int) -> Iterator[list[str]]:
    """The job's bad rows (row number, reason, raw text) from its error CSV."""
    data = b"".join(
        chunk.data
        for chunk in client.stream(
            client.lists_imports.StreamImportErrors, lists_imports_pb2.GetImportRequest(import_id=import_id)
        )
    )
    rows = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))
    next(rows, None)  # header
    yield from rows


def cmd_import(client: Client, args: argparse.Namespace) -> int:
    """Import a CSV into a list as a background job, streaming the file, reporting every bad row."""
    path = Path(args.file)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    job = client.call(
        client.lists_imports.CreateImport,
        lists_imports_pb2.CreateImportRequest(
            list_id=args.list_id, mode=_MODES[args.mode], encoding=args.encoding or "", total_bytes=size,
            file_name=path.name,
        ),
    )  # fmt: skip
    with path.open("rb") as fh:
        offset = 0
        while chunk := fh.read(UPLOAD_CHUNK):
            client.call(
                client.lists_imports.UploadImportChunk,
                lists_imports_pb2.UploadImportChunkRequest(import_id=job.id, offset=offset, data=chunk),
            )
            offset += len(chunk)
    job = client.call(client.lists_imports.StartImport, lists_imports_pb2.StartImportRequest(import_id=job.id))
    last = -1
    while job.state in ("queued", "running", "uploading"):
        if sys.stderr.isatty() and job.bytes_done != last and size:
            print(
                f"\rimport {job.id}: {100 * job.bytes_done // size:3d}%  {job.rows_done} rows", end="", file=sys.stderr
            )
            last = job.bytes_done
        time.sleep(0.3)
        job = client.call(client.lists_imports.GetImport, lists_imports_pb2.GetImportRequest(import_id=job.id))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if job.state != "done":
        raise CliError(f"import {job.id} {job.state}: {job.error or 'see mailblast lists import-status'}")
    print(
        f"imported: {job.rows_added} added, {job.rows_updated} updated, {job.rows_failed} rejected"
        + (f", {job.rows_skipped} skipped" if job.rows_skipped else "")
        + f" (import {job.id})"
    )
    if job.rows_failed:
        for row, reason, *_ in _error_rows(client, job.id):
            print(f"  row {row}: {reason}", file=sys.stderr)
    return 0 if not job.rows_failed else 2


def cmd_export(client: Client, args: argparse.Namespace) -> int:
    """Write a list or segment as CSV to a file (or stdout), streamed."""
    request = lists_imports_pb2.ExportSubscribersRequest(
        list_id=args.list or 0, segment_id=args.segment or 0, encoding=args.encoding
    )
    out = open(args.output, "wb") if args.output else sys.stdout.buffer
    try:
        for chunk in client.stream(client.lists_imports.ExportSubscribers, request):
            out.write(chunk.data)
    finally:
        if args.output:
            out.close()
    return 0


_FIELD_TYPES = {
    "text": lists_fields_pb2.FIELD_TYPE_TEXT,
    "number": lists_fields_pb2.FIELD_TYPE_NUMBER,
    "date": lists_fields_pb2.FIELD_TYPE_DATE,
    "choice": lists_fields_pb2.FIELD_TYPE_CHOICE,
}


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
            segment_ids=args.segment,
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


def cmd_campaign_update(client: Client, args: argparse.Namespace) -> int:
    """Change the given fields of a draft campaign, keeping the others as they are."""
    current = client.call(client.campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=args.id))
    given = {
        "name": args.name,
        "from_name": args.from_name,
        "from_address": args.from_address,
        "reply_to": args.reply_to,
        "subject": args.subject,
        "html_body": _read_body(args.html) if args.html else None,
        "text_body": _read_body(args.text) if args.text else None,
    }
    fields = {key: getattr(current, key) if value is None else value for key, value in given.items()}
    reply = client.call(
        client.campaigns.UpdateCampaign,
        campaigns_pb2.UpdateCampaignRequest(
            campaign_id=args.id,
            list_ids=args.list if args.list is not None else list(current.list_ids),
            segment_ids=args.segment if args.segment is not None else list(current.segment_ids),
            **fields,
        ),
    )
    _show(reply, args.json)
    return 0


def _progress(campaign: campaigns_pb2.Campaign) -> str:
    c = campaign.counters
    state = campaigns_pb2.CampaignState.Name(campaign.state).removeprefix("CAMPAIGN_STATE_").lower()
    line = (
        f"campaign {campaign.id} {state}: total {c.total}  queued {c.queued}  sent {c.sent}  "
        f"deferred {c.deferred}  bounced {c.bounced}  failed {c.failed}"
    )
    # Shown once there are any, so the common line stays as it was.
    return f"{line}  suppressed {c.suppressed}" if c.suppressed else line


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


def bounce_line(name: str, raw: bytes) -> dict:
    """What the bounce service reads in one returned message, as `mailblast bounce parse` prints it."""
    from services.bounce.dsn import BOUNCE, parse_bounce

    report = parse_bounce(raw)
    line = {
        "file": name,
        "is_bounce": report.kind == BOUNCE,
        "kind": report.kind,
        "records": [
            {
                "recipient": r.email,
                "reason": r.reason,
                "hard": r.kind == "hard",
                "status": r.status,
                "replycode": str(r.smtp_code) if r.smtp_code else "",
            }
            for r in report.recipients
        ],
    }
    if report.problems:
        line["problems"] = list(report.problems)
    return line


def cmd_bounce_parse(files: list[Path]) -> int:
    """Print one JSON line per returned message; a file that cannot be read is a line naming why."""
    status = 0
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            print(json.dumps({"file": str(path), "error": f"cannot read the file: {exc.strerror}"}), flush=True)
            status = 1
            continue
        print(json.dumps(bounce_line(str(path), raw), ensure_ascii=False), flush=True)
    return status


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    p = argparse.ArgumentParser(prog="mailblast", description=__doc__)
    p.add_argument("--token", default=_settings().token, help="API token (or MAILBLAST_TOKEN)")
    p.add_argument("--json", action="store_true", help="print compact JSON")
    sub = p.add_subparsers(dest="area", required=True)

    lists = sub.add_parser("lists", help="mailing lists").add_subparsers(dest="cmd", required=True)
    c = lists.add_parser("create", help="create a list")
    c.add_argument("name")
    c.add_argument("--description", default="")
    lists.add_parser("ls", help="show the lists")
    c = lists.add_parser("import", help="import a CSV (UTF-8 or Shift_JIS, detected) as a background job")
    c.add_argument("list_id", type=int)
    c.add_argument("file")
    c.add_argument("--mode", choices=sorted(_MODES), default="add-and-update")
    c.add_argument("--encoding", help="override detection: utf-8 or cp932")
    c = lists.add_parser("export", help="export a list or segment as CSV")
    c.add_argument("--list", type=int)
    c.add_argument("--segment", type=int)
    c.add_argument("--encoding", choices=("utf-8", "shift_jis"), default="utf-8")
    c.add_argument("-o", "--output", help="file to write (default: stdout)")
    c = lists.add_parser("subscribers", help="show a list's subscribers")
    c.add_argument("list_id", type=int)
    c.add_argument("--limit", type=int, default=100)

    fields = sub.add_parser("fields", help="custom fields").add_subparsers(dest="cmd", required=True)
    c = fields.add_parser("create", help="define a custom field, usable as a personal field")
    c.add_argument("key")
    c.add_argument("--label", default="")
    c.add_argument("--type", choices=sorted(_FIELD_TYPES), default="text")
    c.add_argument("--option", action="append", default=[], help="a choice (repeatable)")
    fields.add_parser("ls", help="show the custom fields")

    segs = sub.add_parser("segments", help="segments").add_subparsers(dest="cmd", required=True)
    c = segs.add_parser("create", help='create a segment from conditions, e.g. \'{"match":"all","conditions":[...]}\'')
    c.add_argument("name")
    c.add_argument("conditions_json")
    segs.add_parser("ls", help="show the segments")
    c = segs.add_parser("preview", help="count a segment's subscribers and show a sample")
    c.add_argument("id", type=int)

    supp = sub.add_parser("suppression", help="the organisation's suppression list").add_subparsers(
        dest="cmd", required=True
    )
    c = supp.add_parser("add", help="never send to these addresses")
    c.add_argument("emails", nargs="+")
    c = supp.add_parser("ls", help="show suppressed addresses")
    c.add_argument("--contains", default="")
    c = supp.add_parser("rm", help="allow an address again (admin)")
    c.add_argument("email")

    camps = sub.add_parser("campaigns", help="campaigns").add_subparsers(dest="cmd", required=True)
    c = camps.add_parser("create", help="create a draft campaign")
    c.add_argument("--name", required=True)
    c.add_argument("--list", type=int, action="append", default=[], help="list id (repeatable)")
    c.add_argument("--segment", type=int, action="append", default=[], help="segment id (repeatable)")
    c.add_argument("--from", dest="from_address", required=True)
    c.add_argument("--from-name", default="")
    c.add_argument("--reply-to", default="")
    c.add_argument("--subject", required=True, help="may use personal fields, e.g. '{{ name }}様へ'")
    c.add_argument("--html", help="file with the HTML body")
    c.add_argument("--text", help="file with the text body")
    c = camps.add_parser("update", help="change a draft campaign: only the options given")
    c.add_argument("id", type=int)
    c.add_argument("--name")
    c.add_argument("--list", type=int, action="append", help="list id (repeatable; replaces the lists)")
    c.add_argument("--segment", type=int, action="append", help="segment id (repeatable; replaces the segments)")
    c.add_argument("--from", dest="from_address")
    c.add_argument("--from-name")
    c.add_argument("--reply-to")
    c.add_argument("--subject")
    c.add_argument("--html", help="file with the HTML body")
    c.add_argument("--text", help="file with the text body")
    camps.add_parser("ls", help="show the campaigns")
    for name in ("show", "send", "pause", "resume", "cancel"):
        camps.add_parser(name, help=f"{name} a campaign").add_argument("id", type=int)
    c = camps.add_parser("watch", help="follow a campaign's counters until it is done")
    c.add_argument("id", type=int)
    c.add_argument("--interval", type=float, default=1.0)
    c.add_argument("--timeout", type=float, default=3600.0)

    bounce = sub.add_parser("bounce", help="returned mail (needs no API token)").add_subparsers(
        dest="cmd", required=True
    )
    c = bounce.add_parser("parse", help="classify returned messages: one JSON line per file")
    c.add_argument("files", nargs="+", type=Path, help="messages as received (RFC 5322, e.g. .eml)")

    bus = sub.add_parser("nats", help="NATS credentials (needs no API token)").add_subparsers(dest="cmd", required=True)
    c = bus.add_parser(
        "init", help="create the NATS operator and accounts once; write server.conf and each service's credential"
    )
    c.add_argument("--dir", type=Path, default=None, help=f"where (default {_nats_dir()})")
    c = bus.add_parser(
        "issue-credential", help="a credential that publishes one organisation's transactional mail, nothing else"
    )
    c.add_argument("--organization", type=int, required=True, help="the organisation id the application sends for")
    c.add_argument("--name", required=True, help="the application's name, e.g. shop-app")
    c.add_argument(
        "--signing-key", type=Path, default=None, help=f"signing-key.json (default {_nats_dir() / 'signing-key.json'})"
    )
    c.add_argument("--out", type=Path, default=None, help="the .creds file to write (default ./<name>.creds)")

    c = sub.add_parser(
        "backup",
        help="write every schema of DATABASE_URL and the keys that open its sealed secrets to one encrypted file "
        "(key: MAILBLAST_BACKUP_KEY_FILE; needs no API token)",
    )
    c.add_argument("file", type=Path, help="the backup file to write (never overwritten)")
    c = sub.add_parser("restore", help="bring a backup back into the empty database of DATABASE_URL")
    c.add_argument("file", type=Path)
    c.add_argument(
        "--secrets-dir", type=Path, help="where to write the keys the backup holds (files totp-keys, internal-key)"
    )
    c = sub.add_parser("backup-key", help="make a new backup key (keep it apart from the backups)")
    c.add_argument("file", type=Path, help="the key file to write (mode 0600, never overwritten)")
    return p


def _nats_dir() -> Path:
    return _var_dir() / "secrets" / "nats"


def cmd_nats(args: argparse.Namespace) -> int:
    """`mailblast nats init` and `mailblast nats issue-credential`; no seed is ever printed."""
    if args.cmd == "init":
        setup = nats_credentials.init(args.dir or _nats_dir())
        print(f"NATS trust in {setup.directory}:")
        print(f"  {setup.server_config_file.name}: include it in nats-server's configuration (no secrets)")
        print(f"  <service>.creds: one credential for each of {', '.join(nats_credentials.SERVICES)}")
        print(f"  {setup.signing_key_file.name}: issues application credentials (keep it private)")
        print(f"  {setup.authority_file.name}: every seed (keep it offline)")
        return 0
    key_file = args.signing_key or _nats_dir() / "signing-key.json"
    try:
        issuer = nats_credentials.Issuer.load(key_file)
    except FileNotFoundError:
        raise CliError(
            f"no signing key at {key_file}: run `mailblast nats init` (or make run), or pass --signing-key"
        ) from None
    except (ValueError, KeyError):
        raise CliError(f"{key_file} is not a signing-key.json written by `mailblast nats init`") from None
    if args.organization <= 0:
        raise CliError(f"--organization {args.organization}: give the id of the organisation the application sends for")
    out = args.out or Path(f"{args.name}.creds")
    if out.exists():
        raise CliError(f"{out} exists: a credential file is never overwritten; choose another --out")
    try:
        creds, user = issuer.application(args.organization, args.name)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    nats_credentials.write_secret(out, creds)
    print(f"wrote {out} (mode 0600): publishes to {transactional_subject(args.organization)} only")
    print(f"connect with user_credentials={out} and inbox_prefix={inbox_prefix(user)}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """`mailblast backup`, `mailblast restore` and `mailblast backup-key`; no key is ever printed."""
    try:
        if args.area == "backup-key":
            try:
                backup.write_key(args.file)
            except FileExistsError:
                raise CliError(f"{args.file} exists: a key file is never overwritten; choose another") from None
            print(f"wrote {args.file} (mode 0600): point MAILBLAST_BACKUP_KEY_FILE at it; keep a copy apart")
            return 0
        config = backup.read_settings()
        if args.area == "backup":
            done = backup.backup(config, args.file)
            print(f"wrote {done.path}: schemas {', '.join(done.schemas)}; keys {', '.join(done.secrets) or 'none'}")
            missing = [name for name in ("AUTH_TOTP_KEYS", "MAILBLAST_INTERNAL_KEY") if name not in done.secrets]
            if missing:
                print(f"warning: {', '.join(missing)} not set, so not in the backup", file=sys.stderr)
            return 0
        done = backup.restore(config, args.file, args.secrets_dir)
    except backup.BackupError as exc:
        raise CliError(str(exc)) from None
    print(f"restored the backup of {done.created_at}: schemas {', '.join(done.schemas)}")
    for name in done.secrets:
        print(f"  {name}: {args.secrets_dir / backup.SECRET_FILES[name]} (set {backup.setting_for(name)} to it)")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.area == "nats":
        return cmd_nats(args)
    if args.area == "bounce":
        return cmd_bounce_parse(args.files)
    if args.area in ("backup", "restore", "backup-key"):
        return cmd_backup(args)
    client = Client(args.token)
    if args.area == "lists":
        if args.cmd == "create":
            req = lists_pb2.CreateListRequest(name=args.name, description=args.description)
            _show(client.call(client.lists.CreateList, req), args.json)
        elif args.cmd == "ls":
            _show(client.call(client.lists.ListLists, lists_pb2.ListListsRequest()), args.json)
        elif args.cmd == "import":
            return cmd_import(client, args)
        elif args.cmd == "export":
            return cmd_export(client, args)
        elif args.cmd == "subscribers":
            req = lists_pb2.ListSubscribersRequest(list_id=args.list_id, page_size=args.limit)
            _show(client.call(client.lists.ListSubscribers, req), args.json)
        return 0
    if args.area == "fields":
        if args.cmd == "create":
            req = lists_fields_pb2.CreateFieldRequest(
                key=args.key, label=args.label or args.key, type=_FIELD_TYPES[args.type], options=args.option
            )
            _show(client.call(client.lists_fields.CreateField, req), args.json)
        else:
            _show(client.call(client.lists_fields.ListFields, lists_fields_pb2.ListFieldsRequest()), args.json)
        return 0
    if args.area == "segments":
        if args.cmd == "create":
            req = lists_segments_pb2.SegmentInput(name=args.name, conditions_json=args.conditions_json)
            _show(client.call(client.lists_segments.CreateSegment, req), args.json)
        elif args.cmd == "ls":
            _show(client.call(client.lists_segments.ListSegments, lists_segments_pb2.ListSegmentsRequest()), args.json)
        else:
            req = lists_segments_pb2.PreviewSegmentRequest(segment_id=args.id, sample_size=10)
            _show(client.call(client.lists_segments.PreviewSegment, req), args.json)
        return 0
    if args.area == "suppression":
        if args.cmd == "add":
            req = lists_suppression_pb2.AddSuppressionsRequest(emails=args.emails, reason="manual", source="cli")
            _show(client.call(client.lists_suppression.AddSuppressions, req), args.json)
        elif args.cmd == "ls":
            req = lists_suppression_pb2.ListSuppressionsRequest(email_contains=args.contains, page_size=1000)
            _show(client.call(client.lists_suppression.ListSuppressions, req), args.json)
        else:
            req = lists_suppression_pb2.RemoveSuppressionRequest(email=args.email)
            _show(client.call(client.lists_suppression.RemoveSuppression, req), args.json)
        return 0
    if args.cmd == "create":
        return cmd_campaign_create(client, args)
    if args.cmd == "update":
        return cmd_campaign_update(client, args)
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
