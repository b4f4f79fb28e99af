"""`make docs`: DEVELOPERS.md's settings table, written from the settings' declarations.

`python -m dev.docs` rewrites the table between its marker comments; `--check` only says whether it is
current (exit 1 when not), as tests/unit/test_settings_docs.py does.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cli.backup import BackupSettings
from cli.main import CliSettings
from dev.run import RunSettings
from services.auth.config import Config as AuthConfig
from services.bounce.config import Config as BounceConfig
from services.campaigns.config import Config as CampaignsConfig
from services.common.settings import markdown_table
from services.gateway.config import Config as GatewayConfig
from services.lists.config import Config as ListsConfig
from services.sender.config import Config as SenderConfig
from services.watchdog.config import Config as WatchdogConfig

DEVELOPERS = Path(__file__).resolve().parents[1] / "DEVELOPERS.md"
BEGIN = "<!-- settings: begin (written by `make docs` from the declarations; change those, not this table) -->"
END = "<!-- settings: end -->"

# Every program that reads settings, by the name the table gives it.
OWNERS = {
    "auth": AuthConfig,
    "lists": ListsConfig,
    "campaigns": CampaignsConfig,
    "sender": SenderConfig,
    "bounce": BounceConfig,
    "gateway": GatewayConfig,
    "watchdog": WatchdogConfig,
    "`make run`": RunSettings,
    "`mailblast`": CliSettings,
    "`mailblast backup`/`restore`": BackupSettings,
}


def table() -> str:
    """The settings table as the declarations say it."""
    return markdown_table(OWNERS)


def written(text: str) -> str:
    """The table as DEVELOPERS.md has it between the markers."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip("\n") + "\n"


def rewritten(text: str) -> str:
    """DEVELOPERS.md's text with the table between the markers replaced by the current one."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return f"{text[:start]}\n{table()}{text[end:]}"


def main(argv: list[str]) -> int:
    """Rewrite the table, or with --check say whether it is current."""
    text = DEVELOPERS.read_text()
    if "--check" in argv:
        if written(text) != table():
            print(f"{DEVELOPERS.name}: the settings table differs from the declarations; run `make docs`")
            return 1
        return 0
    DEVELOPERS.write_text(rewritten(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
