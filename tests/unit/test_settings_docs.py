"""DEVELOPERS.md's settings table is the one the declarations give, and every variable the code reads is in it."""

from __future__ import annotations

import re
from pathlib import Path

from dev import docs

ROOT = Path(__file__).resolve().parents[2]
_READ = re.compile(r"""os\.(?:environ(?:\.get)?\s*[\[(]|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""")


def test_the_settings_table_is_written_from_the_declarations():
    # A setting added, removed or given another default or doc in code shows in DEVELOPERS.md only through
    # `make docs`; until that is run this test fails, so the file never disagrees with the code.
    assert docs.written(docs.DEVELOPERS.read_text()) == docs.table(), "run `make docs`"


def test_every_variable_the_code_reads_is_a_declared_setting():
    # `make run` hands some services' settings on (DATABASE_URL, GATEWAY_HTTP_BIND, ...): each variable any
    # program reads by name is declared, so it is in the table; OTEL_* belong to the OpenTelemetry SDK.
    table = docs.table()
    undeclared = set()
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("cli/*.py"), *ROOT.glob("dev/*.py")]:
        for name in _READ.findall(path.read_text()):
            if not name.startswith("OTEL_") and f"| `{name}`" not in table:
                undeclared.add(f"{path.relative_to(ROOT)}: {name}")
    assert undeclared == set()


def test_services_read_the_environment_only_through_the_settings_reader():
    # One reader: no service module looks a variable up itself (only the reader, and tracing for OTEL_*).
    readers = {
        str(path.relative_to(ROOT))
        for path in ROOT.glob("services/**/*.py")
        if re.search(r"os\.(environ|getenv)", path.read_text())
    }
    assert readers == {"services/common/settings.py", "services/common/tracing.py"}
