"""Every action a service writes to the audit log has a label in the console, in English and Japanese."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from babel.messages.pofile import read_po

from services.gateway.admin import AUDIT_ACTIONS

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "services/gateway/translations/ja/LC_MESSAGES/messages.po"
_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
# The calls that write an audit line, and where their action is among the arguments.
_WRITERS = {"audit", "record", "_audit", "_import_started"}


def audited_actions() -> dict[str, str]:
    """Each action literal passed to an audit writer anywhere in the services, with where it appears."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "services").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name not in _WRITERS:
                continue
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _ACTION.match(arg.value):
                    found.setdefault(arg.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_audited_action_has_an_english_label_and_a_japanese_text():
    # An action added to a service but not to the console would show as a bare code; one without a
    # Japanese text would show in English on a Japanese page.
    actions = audited_actions()
    for expected in ("subscriber.erased", "subscriber.data_exported", "list.exported", "suppression.exported",
                     "import.started", "import.finished", "import.rolled_back", "lists.settings_changed",
                     "form.created", "field.created", "organization.settings_changed", "campaign.sent"):  # fmt: skip
        assert expected in actions, expected
    unlabelled = [f"{where}: {action}" for action, where in actions.items() if action not in AUDIT_ACTIONS]
    assert not unlabelled, "label these in services/gateway/admin.py AUDIT_ACTIONS:\n" + "\n".join(unlabelled)
    with CATALOG.open("rb") as fh:
        catalog = read_po(fh)
    untranslated = [str(label._args[0]) for label in AUDIT_ACTIONS.values() if not _translated(catalog, label)]
    assert not untranslated, f"add these to the Japanese catalog: {untranslated}"


def _translated(catalog, label) -> bool:
    message = catalog.get(label._args[0])
    return message is not None and bool(message.string)
