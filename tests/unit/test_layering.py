"""Services stay apart: common imports no service, and no service imports another."""

import ast
from pathlib import Path

SERVICES = Path(__file__).parents[2] / "services"
NAMES = {"auth", "lists", "campaigns", "sender", "bounce", "gateway"}


def imported_services(path: Path) -> set[str]:
    """The services a module imports (services.<name>...)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        for module in modules:
            parts = module.split(".")
            if len(parts) >= 2 and parts[0] == "services" and parts[1] in NAMES:
                found.add(parts[1])
    return found


def test_common_imports_no_service_and_services_import_no_other():
    # Each service owns its code and schema; shared infrastructure lives in services/common only.
    offences = []
    for path in sorted(SERVICES.rglob("*.py")):
        owner = path.relative_to(SERVICES).parts[0]
        for name in imported_services(path):
            if owner == "common" or name != owner:
                offences.append(f"{path.relative_to(SERVICES)} imports services.{name}")
    assert offences == []
