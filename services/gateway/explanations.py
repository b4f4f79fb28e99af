"""The services' explanations (templates and values) in the user's language, from the gateway's catalog."""

from __future__ import annotations

from flask_babel import gettext

from services.common.errors import parse_explanation


def explain(templates: list[str], params: dict, english: str) -> str:
    """A service's explanation (template parts and values) in the user's language; its English if that fails."""
    try:
        return "".join(gettext(t, **params) if params else gettext(t) for t in templates)
    except (KeyError, ValueError, TypeError):
        return english  # a translation whose placeholders do not fit the values


def explain_json(text: str, english: str) -> str:
    """explain() for an explanation kept as JSON; the English text when there is none."""
    parsed = parse_explanation(text) if text else None
    return english if parsed is None else explain(*parsed, english)
