"""The sender's Jinja-free rendering of templates that only fill in fields gives exactly Jinja's result."""

from __future__ import annotations

import pytest

from services.common import templating
from services.common.templating import RenderBudget, RenderLimits
from services.sender.render import CompiledContent, TemplateProblem, _Substitution, recipient_fields

# Templates made only of text and bare field names: the fast form takes them.
SUBSTITUTIONS = [
    "{{ name }}様へ 今月のご案内",
    "<p>{{ name }}</p>\n<p>{{ email }}</p>\n",
    "{{name}}{{ name }}{{name }}",
    "text then {{ company }} and a trailing newline\n",
    "  {{- name -}}  |  {{- email }}  ",
    "{# a comment #}Dear {{ name }},{% raw %} {{ not a field }} {% endraw %}",
    "<a href='https://x.example/?e={{ email }}'>{{ name }} & co</a>",
    "{{ missing }} renders as Jinja renders an absent field",
    "{{ count }} is a number in the attributes",
]
# Anything more goes to Jinja.
JINJA_ONLY = [
    "{{ name | upper }}",
    "{{ name ~ '!' }}",
    "{% if name %}{{ name }}{% endif %}",
    "{% for i in range(2) %}{{ name }}{% endfor %}",
    "{{ company.name }}",
    "{{ range }}",
    "{{ self }}",
    "{{ loop }}",
]
FIELDS = [
    recipient_fields("taro@example.net", "山田 太郎", ""),
    recipient_fields("a+b@example.net", "<script>alert('x')</script> & \"q\"", '{"company": "A&B <Co>"}'),
    recipient_fields("c@example.net", "", '{"company": "", "count": 3}'),
    recipient_fields("d@example.net", "Ann", '{"missing": null, "count": "7"}'),
]


def _jinja(env, source: str, fields: dict) -> str:
    return templating.render(env.from_string(source), fields, RenderBudget())


@pytest.mark.parametrize("source", SUBSTITUTIONS)
def test_substitution_renders_as_jinja_does(source):
    # For text and HTML, with recipients whose fields hold markup, quotes, Japanese, nothing, or a
    # number or null in their attributes (where the Jinja template renders), the output is Jinja's.
    for env in (templating.PLAIN, templating.HTML):
        fast = _Substitution.of(env, source, env.from_string(source))
        assert fast is not None
        for fields in FIELDS:
            budget = RenderBudget()
            text = fast.render(fields, budget)
            expected = _jinja(env, source, fields)
            if text is None:
                assert any(type(fields.get(name)) is not str for name in ("missing", "count", "company"))
                text = templating.render(fast.template, fields, budget)
            assert text == expected
            # The budget is spent as Jinja's finalize hook spends it.
            jinja_budget = RenderBudget()
            templating.render(env.from_string(source), fields, jinja_budget)
            assert budget.room() == jinja_budget.room()


@pytest.mark.parametrize("source", JINJA_ONLY)
def test_other_templates_stay_with_jinja(source):
    # Filters, expressions, control structures, attributes and the sandbox's own names are Jinja's work.
    for env in (templating.PLAIN, templating.HTML):
        assert _Substitution.of(env, source, env.from_string(source)) is None


def test_compiled_content_uses_the_fast_form_and_keeps_the_limits():
    # A campaign of placeholders renders through the fast form, escaped in HTML only; a recipient
    # whose fields would take the output past the limit gets Jinja's own limit error.
    content = CompiledContent("{{ name }}様", "{{ name }}\n", "<p>{{ name }}</p>" * 3)
    assert isinstance(content.html, _Substitution)
    rendered = content.render(recipient_fields("a@example.net", "A&B", ""))
    assert (rendered.subject, rendered.text, rendered.html) == ("A&B様", "A&B\n", "<p>A&amp;B</p>" * 3)
    small = RenderLimits(output_chars=50)
    fields = recipient_fields("a@example.net", "x" * 20, "")
    budget = RenderBudget(small)
    assert content.html.render(fields, budget) is None
    with pytest.raises(templating.TemplateLimitExceeded, match="more than 50 characters"):
        templating.render(content.html.template, fields, RenderBudget(small))
    with pytest.raises(TemplateProblem, match="template limit"):
        content.render(recipient_fields("a@example.net", "y" * 400_000, ""))
