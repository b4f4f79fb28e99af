"""Every text of the console has its Japanese translation, and every value the services hand it has a label."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from flask import Flask

from services.gateway import labels
from services.gateway.i18n import init_i18n

GATEWAY = Path(__file__).resolve().parents[2] / "services" / "gateway"
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "pgettext": ((1, "c"), 2), "lazy_gettext": None}


def _catalog():
    with (GATEWAY / "translations" / "ja" / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        return read_po(fh)


def test_every_console_text_has_a_japanese_translation() -> None:
    # Babel reads every _(), pgettext() and ngettext() of the gateway's code and templates, as pybabel
    # extract would; each must have a non-empty Japanese text, with its context (a campaign's "Sent" and
    # the counter "Sent" are different words).
    catalog = _catalog()
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2")]
    missing = []
    for filename, lineno, message, _comments, context in extract_from_dir(str(GATEWAY), method_map, keywords=KEYWORDS):
        msgid = message if isinstance(message, str) else message[0]
        found = catalog.get(msgid, context=context)
        text = found.string if found else ""
        if not text or (isinstance(text, tuple) and not all(text)):
            missing.append(f"{filename}:{lineno} {context or ''} {msgid!r}")
    assert not missing, "\n".join(missing)


def test_each_state_status_role_and_cause_shows_in_japanese() -> None:
    # In a Japanese request, each value of each table has a Japanese label different from the value itself;
    # a value no table knows shows as it is.
    app = Flask(__name__)
    init_i18n(app)
    with app.test_request_context(headers={"Accept-Language": "ja"}):
        for table in (labels.CAMPAIGN_STATES, labels.SUBSCRIBER_STATUSES, labels.STATUS_CAUSES, labels.ROLES,
                      labels.SCOPES, labels.IMPORT_STATES):  # fmt: skip
            for value in table:
                shown = labels.label(table, value)
                assert shown != value and not shown.isascii(), (value, shown)
        assert labels.label(labels.CAMPAIGN_STATES, "sent") == "配信完了"
        assert labels.label(labels.ROLES, "admin") == "管理者"
        assert labels.label(labels.CAMPAIGN_STATES, "archived") == "archived"
    with app.test_request_context(headers={"Accept-Language": "en"}):
        assert labels.label(labels.CAMPAIGN_STATES, "sent") == "Sent"
