"""Domain errors that the gRPC layer turns into status codes; messages are meant for people."""

from __future__ import annotations

import json
from typing import Any

# Trailing metadata key of a refusal's template and values (JSON; binary, since values may be any text).
EXPLANATION_KEY = "mailblast-explanation-bin"


class Explained(Exception):
    """An error whose message is a translatable template (`%(name)s` placeholders) and its values.

    str() is the English text; the console looks each template up in its catalog and fills in `params`,
    so a Japanese page shows a Japanese explanation. Without params a template is the text as is.
    """

    def __init__(self, *templates: str, **params: Any) -> None:
        # Usually one template. A reason behind a prefix ("field 'x': " + "'abc' is not a number") keeps
        # its parts, translated one by one, so the catalog needs each part once, not every combination.
        self.templates = templates
        self.params = params
        super().__init__("".join(t % params if params else t for t in templates))

    @property
    def template(self) -> str:
        """The whole template, in English."""
        return "".join(self.templates)

    @classmethod
    def of(cls, exc: Exception, prefix: str = "", **params: Any) -> Explained:
        """This kind of error with the explanation of `exc`, after an optional prefix template."""
        if isinstance(exc, Explained):
            templates, merged = exc.templates, {**exc.params, **params}
        else:
            templates, merged = ("%(reason)s",), {"reason": str(exc), **params}
        return cls(*((prefix,) if prefix else ()), *templates, **merged)


class Problem(Explained, ValueError):
    """A ValueError with a translatable explanation: for checks that callers turn into their own errors."""


class ServiceError(Explained):
    """Base of errors a caller should see, with a message saying what was wrong."""

    code_name = "INTERNAL"


class InvalidArgument(ServiceError):
    """The request itself is wrong (bad address, header injection, missing field)."""

    code_name = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    """No such object in the caller's organisation (also used for other organisations' objects)."""

    code_name = "NOT_FOUND"


class AlreadyExists(ServiceError):
    """The object to create exists already."""

    code_name = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    """The object is not in a state that allows this (sending a sent campaign)."""

    code_name = "FAILED_PRECONDITION"


class PermissionDenied(ServiceError):
    """The caller is known but not allowed to do this."""

    code_name = "PERMISSION_DENIED"


class Unauthenticated(ServiceError):
    """The caller could not be identified."""

    code_name = "UNAUTHENTICATED"


def explanation_json(exc: Explained) -> str:
    """The template parts and values of `exc` as JSON, to send or to keep beside its English text."""
    return json.dumps({"templates": exc.templates, "params": exc.params}, ensure_ascii=False, default=str)


def explanation_metadata(exc: Explained) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying the template and values of `exc`."""
    return ((EXPLANATION_KEY, explanation_json(exc).encode()),)


def parse_explanation(text: str | bytes) -> tuple[list[str], dict[str, Any]] | None:
    """The (templates, values) of an explanation_json text, or None when it is not one."""
    try:
        body = json.loads(text)
        templates, params = body["templates"], body["params"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(templates, list) and all(isinstance(t, str) for t in templates) and isinstance(params, dict):
        return templates, params
    return None


def explanation_from(metadata: Any) -> tuple[list[str], dict[str, Any]] | None:
    """The (templates, values) a refusal's trailing metadata carries, or None when it carries none."""
    for key, value in metadata or ():
        if key == EXPLANATION_KEY:
            return parse_explanation(value)
    return None
