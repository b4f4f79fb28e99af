"""Personal fields: a campaign's subject and bodies compiled once, rendered per recipient in a sandbox."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment


class TemplateProblem(Exception):
    """A campaign template cannot be compiled or rendered; the message says why."""


@dataclass(frozen=True)
class Rendered:
    """One recipient's subject and bodies with the personal fields filled in."""

    subject: str
    text: str
    html: str


def _environment(autoescape: bool) -> SandboxedEnvironment:
    # ChainableUndefined: a field a subscriber lacks (even {{ company.name }}) renders empty, never raises.
    return SandboxedEnvironment(
        autoescape=autoescape, undefined=ChainableUndefined, keep_trailing_newline=True, cache_size=0
    )


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


class CompiledContent:
    """A campaign's templates, compiled once: HTML autoescaped, text and subject not."""

    def __init__(self, subject: str, text: str, html: str) -> None:
        self.subject = self._compile(_PLAIN, subject, "subject")
        self.text = self._compile(_PLAIN, text, "text body")
        self.html = self._compile(_HTML, html, "HTML body")

    @staticmethod
    def _compile(env: SandboxedEnvironment, source: str, part: str) -> Template | _Literal | None:
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
        """Fill in one recipient's fields; a template failing at run time raises TemplateProblem."""
        try:
            return Rendered(
                subject=self.subject.render(fields) if self.subject else "",
                text=self.text.render(fields) if self.text else "",
                html=self.html.render(fields) if self.html else "",
            )
        except Exception as exc:  # the sandbox raises SecurityError, TypeError, ... from user templates
            raise TemplateProblem(f"template error: {exc}") from None


class _Literal:
    """A template without placeholders: renders to itself."""

    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def render(self, _fields: dict[str, Any]) -> str:
        return self.source


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
    """Compiled campaigns by (campaign id, content hash), so a batch compiles nothing already seen."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[int, bytes], CompiledContent | TemplateProblem] = OrderedDict()

    def get(self, campaign_id: int, subject: str, text: str, html: str) -> CompiledContent:
        """Return the compiled content, compiling it on first use; raises TemplateProblem."""
        digest = hashlib.blake2b(b"\0".join(part.encode() for part in (subject, text, html)), digest_size=16).digest()
        key = (campaign_id, digest)
        entry = self._entries.get(key)
        if entry is None:
            try:
                entry = CompiledContent(subject, text, html)
            except TemplateProblem as exc:
                entry = exc
            self._entries[key] = entry
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        if isinstance(entry, TemplateProblem):
            raise TemplateProblem(str(entry))
        return entry
