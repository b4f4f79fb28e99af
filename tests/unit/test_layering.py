"""Services stay apart and domain code stays transport-free.

Common imports no service, no service imports another, and no service imports the development tools.
A service's domain modules — everything but its config, service, grpc_*, consumers, store*, __main__,
the adapters named in ADAPTERS and the gateway's views — import neither grpc, nats, psycopg,
psycopg_pool nor protobuf, nor a module of services/common that does: they take a narrow interface
(a Protocol or a callable) that service.py wires to the transport.
"""

import ast
from pathlib import Path

SERVICES = Path(__file__).parents[2] / "services"
NAMES = {"auth", "lists", "campaigns", "sender", "bounce", "gateway", "watchdog"}
TRANSPORTS = ("grpc", "nats", "psycopg", "psycopg_pool", "mailblast.v1", "google.protobuf")
# Modules whose job is a transport, by their name in the service's folder.
EDGE_NAMES = {"config", "service", "consumers", "__main__"}
EDGE_PREFIXES = ("grpc_", "store")
# Adapters with other names, each the implementation of an interface a domain module takes.
ADAPTERS = {
    "auth/mailer.py": "auth's notices as TransactionalMessages on JetStream (security.SendMail)",
    "auth/convert.py": "the one place auth's login and session statuses meet protobuf",
    "bounce/events.py": "stored bounces announced as BounceEvents on JetStream (recorder.Announce)",
    "bounce/convert.py": "the one place bounce's kinds and sources meet protobuf",
    "campaigns/recipients.py": "a campaign's recipients streamed from lists over gRPC (fanout.Audience)",
    "campaigns/batches.py": "SendBatches published to the senders on JetStream (fanout.Batches)",
    "campaigns/announcements.py": "campaign state changes relayed from the outbox table to JetStream",
    "campaigns/convert.py": "the one place campaigns' states and recipient statuses meet protobuf",
    "lists/announcements.py": "suppression changes relayed from the outbox table to JetStream",
    "lists/convert.py": "the one place lists' statuses and kinds meet protobuf (StrEnums <-> enum numbers)",
    "sender/convert.py": "the one place the sender's domain meets protobuf (events in, reports and RPCs out)",
    "sender/writer.py": "ledger outcomes committed in groups, then reported on JetStream (collaborators.Recorder)",
    "gateway/audience.py": "what the audience blueprints share: refusals as flashes, streamed RPC downloads, fields",
    "gateway/app.py": "the Flask app, mapping the services' gRPC status codes to HTTP",
    "gateway/clients.py": "the gateway's gRPC channels and calls",
    "gateway/statuses.py": "the console's names of the services' status enums",
    "gateway/security.py": "the console's logins: Flask-Login's user is auth's GetSession answer",
}
# Domain modules that still import a transport. The lists and sender restructurings of issue 10 (items 1,
# 3 and 4: stores of named SQL, narrow collaborators, local copies instead of calls) move these behind
# interfaces; each entry leaves this list when its module no longer offends.
KNOWN_EXCEPTIONS = {
    "lists/erasures.py",
    "lists/imports.py",
    "lists/segments.py",
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, by its full dotted name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def imported_services(path: Path) -> set[str]:
    """The services a module imports (services.<name>...)."""
    return {
        module.split(".")[1]
        for module in imported_modules(path)
        if module.startswith("services.") and module.split(".")[1] in NAMES
    }


def _common_transports() -> set[str]:
    """The modules of services/common that import a transport themselves."""
    return {
        f"services.common.{path.stem}"
        for path in (SERVICES / "common").glob("*.py")
        if any(_under(m, t) for m in imported_modules(path) for t in TRANSPORTS)
    }


def _is_view(path: Path) -> bool:
    """A gateway module that defines a blueprint of routes: HTTP in, gRPC calls out."""
    tree = ast.parse(path.read_text(), str(path))
    return any(
        isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", "") == "Blueprint"
        for node in tree.body
    )


def domain_modules() -> list[Path]:
    """The services' domain modules, as this file's docstring defines them."""
    found = []
    for path in sorted(SERVICES.rglob("*.py")):
        relative = path.relative_to(SERVICES)
        if relative.parts[0] == "common" or path.stem == "__init__":
            continue
        if path.stem in EDGE_NAMES or path.stem.startswith(EDGE_PREFIXES) or str(relative) in ADAPTERS:
            continue
        if relative.parts[0] == "gateway" and _is_view(path):
            continue
        found.append(path)
    return found


def transport_imports(path: Path, common_transports: set[str]) -> list[str]:
    """The transports (and transport-bound common modules) a module imports."""
    modules = imported_modules(path)
    offending = {t for t in TRANSPORTS if any(_under(m, t) for m in modules)}
    offending |= {c for c in common_transports if any(_under(m, c) for m in modules)}
    return sorted(offending)


def test_common_imports_no_service_and_services_import_no_other():
    # Each service owns its code and schema; shared infrastructure lives in services/common only.
    offences = []
    for path in sorted(SERVICES.rglob("*.py")):
        owner = path.relative_to(SERVICES).parts[0]
        for name in imported_services(path):
            if owner == "common" or name != owner:
                offences.append(f"{path.relative_to(SERVICES)} imports services.{name}")
    assert offences == []


def test_services_import_no_development_tool():
    # dev/ (make run, embedded servers, the catcher) and cli/ build on the services, never the other way round:
    # a production image runs a service without either being on its path.
    offences = [
        f"{path.relative_to(SERVICES)} imports {module}"
        for path in sorted(SERVICES.rglob("*.py"))
        for module in imported_modules(path)
        if _under(module, "dev") or _under(module, "cli")
    ]
    assert offences == []


def test_domain_modules_import_no_transport():
    # The domain is tested and read without NATS, gRPC or PostgreSQL: those stay in the service's edge
    # modules, behind an interface the domain takes.
    common_transports = _common_transports()
    assert {"services.common.bus", "services.common.rpc", "services.common.db"} <= common_transports
    offences = {}
    for path in domain_modules():
        relative = str(path.relative_to(SERVICES))
        found = transport_imports(path, common_transports)
        if found and relative not in KNOWN_EXCEPTIONS:
            offences[relative] = found
    assert offences == {}


def test_known_exceptions_still_need_their_place():
    # An exception whose module was fixed (or removed) leaves the list, so the list only ever shrinks.
    common_transports = _common_transports()
    domain = {str(path.relative_to(SERVICES)): path for path in domain_modules()}
    fixed = sorted(
        name
        for name in KNOWN_EXCEPTIONS
        if name not in domain or not transport_imports(domain[name], common_transports)
    )
    assert fixed == []


def test_the_domain_of_every_service_is_checked():
    # The rule is not vacuous: each service has domain modules under it, and the adapters named exist.
    owners = {path.relative_to(SERVICES).parts[0] for path in domain_modules()}
    assert owners == NAMES
    assert all((SERVICES / name).is_file() for name in ADAPTERS)
