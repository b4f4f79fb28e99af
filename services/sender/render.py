"""Personal fields: a campaign's subject and bodies compiled once, rendered per recipient in a bounded sandbox."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jinja2 import Template, TemplateError, nodes
from markupsafe import escape

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
                for part, template in (
                    ("subject", _jinja(self.subject)),
                    ("text body", _jinja(self.text)),
                    ("HTML body", _jinja(self.html)),
                )
                if template is not None
            )
        except TemplateLimitExceeded as exc:
            raise TemplateProblem(f"template limit: {exc}") from None

    @staticmethod
    def _compile(env: BoundedEnvironment, source: str, part: str) -> Template | _Substitution | _Literal | None:
        if not source:
            return None
        if "{" not in source:
            # Nothing to fill in: keep the string and skip Jinja entirely.
            return _Literal(source)
        try:
            template = env.from_string(source)
            return _Substitution.of(env, source, template) or template
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f" line {line}" if line else ""
            raise TemplateProblem(f"template error in the {part}{where}: {exc}") from None

    def render(self, fields: dict[str, Any]) -> Rendered:
        """Fill in one recipient's fields within one budget; a failure or a limit raises TemplateProblem."""
        budget = _Tally()
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
    def _render(template: Template | _Substitution | _Literal | None, fields: dict[str, Any], budget: _Tally) -> str:
        if template is None:
            return ""
        if isinstance(template, _Literal):
            return template.source
        if isinstance(template, _Substitution):
            text = template.render(fields, budget)
            if text is not None:
                return text
            template = template.template
        return templating.render(template, fields, budget.budget())


class _Tally:
    """One message's output count, becoming a RenderBudget only once a part needs Jinja: the budget
    reads the thread's CPU clock when made (a system call), which the fast form has no use for."""

    __slots__ = ("_budget", "_chars")

    def __init__(self) -> None:
        self._budget: RenderBudget | None = None
        self._chars = 0

    def room(self) -> int:
        """Characters the render may still write out."""
        return self._budget.room() if self._budget is not None else templating.LIMITS.output_chars - self._chars

    def written(self, chars: int) -> None:
        """Count characters written out by the fast form."""
        if self._budget is not None:
            self._budget.written(chars)
        else:
            self._chars += chars

    def budget(self) -> RenderBudget:
        """The render's budget, with what the fast form wrote already spent."""
        if self._budget is None:
            self._budget = RenderBudget()
            self._budget.written(self._chars)
        return self._budget


class _Literal:
    """A template without placeholders: renders to itself."""

    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source


def _jinja(template: Template | _Substitution | _Literal | None) -> Template | None:
    if isinstance(template, _Substitution):
        return template.template
    return template if isinstance(template, Template) else None


# Names the sandbox resolves itself, whatever the fields say.
_SPECIAL_NAMES = frozenset({"self", "loop", "super", "caller", "varargs", "kwargs"})


class _Substitution:
    """A template that only puts fields into text (`{{ name }}`, nothing else), rendered without Jinja.

    A campaign's body is mostly of this kind, and Jinja spends about 1.5 µs on each placeholder (its
    context, the sandbox's finalize hook counting the output, Markup for every piece of literal text):
    a 10 KB newsletter naming the recipient in every row cost 0.3 ms a message, a third of the sender's
    CPU budget. Here the text between placeholders is kept as Jinja's parser gives it (whitespace control
    applied), each placeholder is filled with the field's text (HTML-escaped by markupsafe, as Jinja's
    autoescape does) and the output is counted on the same budget. Whenever a field is missing or is not
    text, or the output would pass the budget, the Jinja template renders instead, so the result and the
    errors are Jinja's own (tests/unit/test_render_substitution.py compares the two).
    """

    __slots__ = ("_autoescape", "_literal_chars", "_pieces", "_places", "template")

    def __init__(self, template: Template, pieces: list[str], slots: list[tuple[int, str]], autoescape: bool) -> None:
        self.template = template
        self._pieces = pieces
        # Where each field goes: filled (and escaped) once however often it appears.
        self._places: dict[str, list[int]] = {}
        for index, name in slots:
            self._places.setdefault(name, []).append(index)
        self._literal_chars = sum(map(len, pieces))
        self._autoescape = autoescape

    @classmethod
    def of(cls, env: BoundedEnvironment, source: str, template: Template) -> _Substitution | None:
        """The fast form of a template made only of text and bare field names; None for any other."""
        pieces: list[str] = []
        slots: list[tuple[int, str]] = []
        for node in env.parse(source).body:
            if not isinstance(node, nodes.Output):
                return None
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    pieces.append(child.data)
                elif (
                    isinstance(child, nodes.Name)
                    and child.ctx == "load"
                    and child.name not in _SPECIAL_NAMES
                    and child.name not in env.globals
                ):
                    slots.append((len(pieces), child.name))
                    pieces.append("")
                else:
                    return None
        return cls(template, pieces, slots, bool(env.autoescape))

    def render(self, fields: dict[str, Any], budget: RenderBudget | _Tally) -> str | None:
        """The text, or None when Jinja must render it."""
        out = self._pieces.copy()
        chars = self._literal_chars
        for name, places in self._places.items():
            raw = fields.get(name)
            if type(raw) is not str:
                return None
            # Counted as Jinja's finalize hook counts: the field's own text, before escaping.
            chars += len(raw) * len(places)
            value = escape(raw) if self._autoescape else raw
            for index in places:
                out[index] = value
        if chars > budget.room():
            return None
        budget.written(chars)
        return "".join(out)


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
