"""What the console shows for each value the services hand it: campaign states, statuses, roles, causes."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from flask_babel import pgettext

# Each table maps a value to a function giving its label in the request's language (the catalog is read per
# request); a value not listed (a newer service's) shows as it is rather than failing the page.
CAMPAIGN_STATES: dict[str, Callable[[], str]] = {
    "draft": lambda: pgettext("campaign state", "Draft"),
    "scheduled": lambda: pgettext("campaign state", "Scheduled"),
    "sending": lambda: pgettext("campaign state", "Sending"),
    "paused": lambda: pgettext("campaign state", "Paused"),
    "sent": lambda: pgettext("campaign state", "Sent"),
    "cancelled": lambda: pgettext("campaign state", "Cancelled"),
    "unknown": lambda: pgettext("campaign state", "Unknown"),
}
SUBSCRIBER_STATUSES: dict[str, Callable[[], str]] = {
    "active": lambda: pgettext("subscriber status", "Active"),
    "unsubscribed": lambda: pgettext("subscriber status", "Unsubscribed"),
    "error_stopped": lambda: pgettext("subscriber status", "Stopped by errors"),
    "complained": lambda: pgettext("subscriber status", "Complained"),
    "deleted": lambda: pgettext("subscriber status", "Deleted"),
    "pending": lambda: pgettext("subscriber status", "Awaiting confirmation"),
    "unknown": lambda: pgettext("subscriber status", "Unknown"),
}
STATUS_CAUSES: dict[str, Callable[[], str]] = {
    "manual": lambda: pgettext("status cause", "Changed by hand"),
    "import": lambda: pgettext("status cause", "Import"),
    "signup": lambda: pgettext("status cause", "Signup form"),
    "confirmed": lambda: pgettext("status cause", "Confirmed by mail"),
    "unsubscribe": lambda: pgettext("status cause", "Unsubscribed"),
    "left_lists": lambda: pgettext("status cause", "Left lists"),
    "hard_bounce": lambda: pgettext("status cause", "Hard bounces"),
    "complaint": lambda: pgettext("status cause", "Complaint"),
}
ROLES: dict[str, Callable[[], str]] = {
    "viewer": lambda: pgettext("role", "Viewer"),
    "editor": lambda: pgettext("role", "Editor"),
    "admin": lambda: pgettext("role", "Administrator"),
    "owner": lambda: pgettext("role", "Owner"),
}
SCOPES: dict[str, Callable[[], str]] = {
    "read": lambda: pgettext("scope", "Read"),
    "send": lambda: pgettext("scope", "Send"),
    "admin": lambda: pgettext("scope", "Administer"),
}
IMPORT_STATES: dict[str, Callable[[], str]] = {
    "uploading": lambda: pgettext("import state", "Uploading"),
    "queued": lambda: pgettext("import state", "Queued"),
    "running": lambda: pgettext("import state", "Running"),
    "done": lambda: pgettext("import state", "Done"),
    "failed": lambda: pgettext("import state", "Failed"),
    "rolled_back": lambda: pgettext("import state", "Rolled back"),
}

_TABLES = {
    "campaign_state": CAMPAIGN_STATES,
    "subscriber_status": SUBSCRIBER_STATUSES,
    "status_cause": STATUS_CAUSES,
    "role": ROLES,
    "scope": SCOPES,
    "import_state": IMPORT_STATES,
}


def label(table: dict[str, Callable[[], str]], value: str | None) -> str:
    """The label of `value` in the request's language; an unlisted value as it is, none as empty."""
    if not value:
        return ""
    found = table.get(value)
    return found() if found else value


def init_labels(app: Flask) -> None:
    """Templates write `value|campaign_state` and likewise `|subscriber_status`, `|status_cause`, `|role`, ...."""
    for name, table in _TABLES.items():
        app.jinja_env.filters[name] = lambda value, table=table: label(table, value)
