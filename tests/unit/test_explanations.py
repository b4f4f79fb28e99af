"""Refusal explanations: English for the API, templates the console translates, and a catalog that has them all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from services.common.errors import (
    InvalidArgument,
    NotFound,
    Problem,
    explanation_from,
    explanation_metadata,
)
from services.lists import fields

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "services/gateway/translations/ja/LC_MESSAGES/messages.po"
# Services whose refusals the console shows translated: all of them.
TRANSLATED = tuple(f"services/{name}" for name in ("common", "auth", "lists", "campaigns", "sender", "bounce"))
# Every way a service spells an explanation: the error classes take it first, `X.of(exc, prefix)` second.
KEYWORDS = {
    name: None
    for name in (
        "ServiceError",
        "InvalidArgument",
        "NotFound",
        "AlreadyExists",
        "FailedPrecondition",
        "PermissionDenied",
        "Unauthenticated",
        "ResourceExhausted",
        "Problem",
        "TemplateLimitExceeded",
    )
} | {"of": (2,)}
_PLACEHOLDER = re.compile(r"%\((\w+)\)[sr]")


def templates_in(folder: str) -> dict[str, str]:
    """Each literal explanation template in a service's code, with where it first appears."""
    found: dict[str, str] = {}
    for filename, line, message, _, _ in extract_from_dir(
        ROOT / folder, method_map=[("**.py", "python")], keywords=KEYWORDS
    ):
        if isinstance(message, tuple):
            message = message[0]
        if message:
            found.setdefault(message, f"{folder}/{filename}:{line}")
    return found


def test_every_explanation_of_the_translated_services_has_a_japanese_text_with_the_same_values():
    # A new refusal in lists (or common) without a Japanese text would reach Japanese pages in English;
    # a translation naming other values than its template would fail to format.
    with CATALOG.open("rb") as fh:
        catalog = read_po(fh)
    templates: dict[str, str] = {}
    for folder in TRANSLATED:
        templates.update(templates_in(folder))
    assert len(templates) > 150
    untranslated = [f"{where}: {t!r}" for t, where in templates.items() if t not in catalog or not catalog[t].string]
    assert not untranslated, "add these to the Japanese catalog:\n" + "\n".join(untranslated)
    for template in templates:
        translated = catalog[template].string
        assert sorted(_PLACEHOLDER.findall(translated)) == sorted(_PLACEHOLDER.findall(template)), template
        assert "%" not in _PLACEHOLDER.sub("", translated), template


def test_english_text_is_the_template_filled_in_and_prefixes_stay_separate_parts():
    # The API's English stays word for word what it was; the console gets each part to translate.
    definition = fields.FieldDef(1, "plan", "Plan", "choice", ("free", "pro"))
    with pytest.raises(ValueError) as raised:
        fields.coerce(definition, "gold")
    problem = raised.value
    assert isinstance(problem, Problem)
    assert str(problem) == "field 'plan': 'gold' is not one of free, pro"
    assert problem.templates == ("field %(field)r: ", "%(value)r is not one of %(options)s")
    refusal = InvalidArgument.of(problem)
    assert str(refusal) == str(problem) and refusal.templates == problem.templates
    assert refusal.template == "field %(field)r: %(value)r is not one of %(options)s"


def test_a_plain_value_error_becomes_a_reason_and_text_without_values_is_left_alone():
    # Library errors (email-validator, json) carry no template: their text is a value of its own.
    wrapped = InvalidArgument.of(ValueError("Expecting value: line 1"), "condition value: ")
    assert str(wrapped) == "condition value: Expecting value: line 1"
    assert wrapped.templates == ("condition value: ", "%(reason)s")
    assert str(NotFound("50% of nothing")) == "50% of nothing"


def test_explanation_travels_as_trailing_metadata_and_bad_metadata_is_ignored():
    # Japanese values survive the trip; metadata from elsewhere that is not ours, or broken, means
    # the console falls back to the English details.
    refusal = NotFound("no list %(list)s in your organisation", list="顧客")
    metadata = explanation_metadata(refusal)
    assert explanation_from(metadata) == (["no list %(list)s in your organisation"], {"list": "顧客"})
    key = metadata[0][0]
    assert explanation_from([(key, b"{not json")]) is None
    assert explanation_from([(key, b'{"templates": "one", "params": {}}')]) is None
    assert explanation_from([("other-bin", b"{}")]) is None
    assert explanation_from(None) is None
