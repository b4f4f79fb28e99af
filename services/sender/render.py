"""Personal fields: a campaign's subject and bodies compiled once, rendered per recipient in a bounded sandbox."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jinja2 import Template, TemplateError

from services.common import templating
from services.common.templating import BoundedEnvironment, RenderBudget, TemplateLimitExceeded


class TemplateProblem(Exception):
    """A campaign template cannot be compiled or rendered; the message says why."""


@dataclass(frozen=True)
class Rendered:
    """One recipient's subject and bodies with the personal fields filled in."""

    subject: str
    text: str
    html: str


class CompiledContent:
    """A campaign's templates, compiled once (HTML autoescaped, text and subject not) and tried within the limits.

    The trial renders them with the sample fields the campaigns service checked them with when the
    campaign was saved: a campaign that breaks a limit anyway (saved before the limits existed) fails
    as a whole, once, instead of every recipient spending the limits first.
    """

    def __init__(self, subject: str, text: str, html: str) -> None:
        self.subject = self._compile(templating.PLAIN, subject, "subject")
        self.text = self._compile(templating.PLAIN, text, "text body")
        self.html = self._compile(templating.HTML, html, "HTML body")
        try:
            templating.check_within_limits(
                (part, template)
                for part, template in (("subject", self.subject), ("text body", self.text), ("HTML body", self.html))
                if isinstance(template, Template)
            )
        except TemplateLimitExceeded as exc:
            raise TemplateProblem(f"template limit: {exc}") from None

    @staticmethod
    def _compile(env: BoundedEnvironment, source: str, part: str) -> Template | _Literal | None:
        if not source:
            return None
        if "{" not in source:
            # Nothing to fill in: keep the string and skip Jinja entirely.
            return _Literal(source)
        try:
            return env.from_string(source)
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f" line {line}" if line else ""
            raise TemplateProblem(f"template error in the {part}{where}: {exc}") from None

    def render(self, fields: dict[str, Any]) -> Rendered:
        """Fill in one recipient's fields within one budget; a failure or a limit raises TemplateProblem."""
        budget = RenderBudget()
        try:
            return Rendered(
                subject=self._render(self.subject, fields, budget),
                text=self._render(self.text, fields, budget),
                html=self._render(self.html, fields, budget),
            )
        except TemplateLimitExceeded as exc:
            raise TemplateProblem(f"template limit: {exc}") from None
        except Exception as exc:  # the sandbox raises SecurityError, TypeError, ... from user templates
            raise TemplateProblem(f"template error: {exc}") from None

    @staticmethod
    def _render(template: Template | _Literal | None, fields: dict[str, Any], budget: RenderBudget) -> str:
        if template is None:
            return ""
        if isinstance(template, _Literal):
            return template.source
        return templating.render(template, fields, budget)


class _Literal:
    """A template without placeholders: renders to itself."""

    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source


def recipient_fields(email: str, name: str, attributes_json: str) -> dict[str, Any]:
    """The fields a template sees: the attributes object, then name and email (which win)."""
    fields: dict[str, Any] = {}
    if attributes_json:
        try:
            parsed = json.loads(attributes_json)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            fields.update(parsed)
    fields["name"] = name
    fields["email"] = email
    return fields


class TemplateCache:
    """Compiled campaigns by (campaign id, content hash), so a batch compiles nothing already seen.

    Safe to use from the render threads: a content compiled twice at once is kept once.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[int, bytes], CompiledContent | TemplateProblem] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, campaign_id: int, subject: str, text: str, html: str) -> CompiledContent:
        """Return the compiled content, compiling it on first use; raises TemplateProblem."""
        digest = hashlib.blake2b(b"\0".join(part.encode() for part in (subject, text, html)), digest_size=16).digest()
        key = (campaign_id, digest)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None:
            try:
                entry = CompiledContent(subject, text, html)
            except TemplateProblem as exc:
                entry = exc
            with self._lock:
                entry = self._entries.setdefault(key, entry)
                if len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        if isinstance(entry, TemplateProblem):
            raise TemplateProblem(str(entry))
        return entry
