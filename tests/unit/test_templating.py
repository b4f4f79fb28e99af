"""Bounded template rendering: attacks stop at a named limit, ordinary templates render as they always did."""

from __future__ import annotations

import tracemalloc

import pytest
from jinja2 import ChainableUndefined
from jinja2.sandbox import SandboxedEnvironment

from services.common.templating import (
    HTML,
    PLAIN,
    RenderBudget,
    RenderLimits,
    TemplateLimitExceeded,
    check_within_limits,
    render,
)

FIELDS = {
    "name": "山田 <太郎>",
    "email": "taro@example.jp",
    "points": 1234567,
    "plan": "gold",
    "tags": ["a", "b", "<c>"],
    "company": {"name": "ACME & Co"},
    "items": [{"title": "本", "price": 1200}, {"title": "ペン", "price": 300}],
    "rate": 0.125,
    "neg": -5,
}
LOOPS = "loop iterations"
VALUE = "builds a value of more than"
OUTPUT = "produces more than"
DIGITS = "digits"
ATTACKS = [
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", LOOPS),
    ("{% set a='x'*100000000 %}{{ a|length }}", VALUE),
    ("{% set x = 10**1000000 %}", DIGITS),
    ("{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}", DIGITS),
    ("{{ '%0999999999d' % 1 }}", VALUE),
    ("{{ '%0999999999d'|format(1) }}", VALUE),
    ("{{ '{:>999999999}'.format(1) }}", VALUE),
    ("{{ 'x'|center(999999999) }}{{ 'x'.ljust(999999999) }}", VALUE),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", VALUE),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", VALUE),
    ("{% set ns = namespace(s=[1]) %}{% for i in range(40) %}{% set ns.s = [ns.s, ns.s] %}{% endfor %}", VALUE),
    ("{% set a='x'*999999 %}{% set b=a~a %}{{ b|length }}", VALUE),
    ("{{ ('x'*1000)|replace('', 'y'*1000) }}", VALUE),
    ("{% set s='x'*900000 %}{{ [s, s]|join }}{{ ''.join([s, s]) }}", VALUE),
    ("{% set s='x'*999999 %}{{ ((s,)*1000)|join }}", VALUE),
    ("{{ range(3)|batch(1000000000, 0)|list|length }}", VALUE),
    ("{{ (1).to_bytes(1000000000, 'big')|length }}", VALUE),
    ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(30) }}", LOOPS),
    ("{% for i in [1,2,3] recursive %}{% if loop.depth < 30 %}{{ loop([1,2,3]) }}{% endif %}{% endfor %}", LOOPS),
    ("{% macro m() %}{% for i in range(5000) %}{{ s }}{% endfor %}{% endmacro %}{% set s='x'*999 %}{{ m() }}", OUTPUT),
    ("{% for i in range(9999) %}" + "A" * 1000 + "{% endfor %}", OUTPUT),
    ("{% filter upper %}{% for i in range(100000) %}x{% endfor %}{% endfilter %}", LOOPS),
    ("{{ [[1]*1000]*1000|sum(start=[]) }}", "numbers only"),
]
ORDINARY = [
    "{{ name }}様 ({{ email }})",
    "{{ company.name }} / {{ missing.deep.field }} / {{ missing|default('なし') }}",
    "{% if plan == 'gold' %}ゴールド{% elif plan %}その他{% else %}なし{% endif %}\n",
    "{% for t in tags %}{{ loop.index }}:{{ t|upper }}{% if not loop.last %}, {% endif %}{% endfor %}",
    "{% for i in items|sort(attribute='price') %}{{ i.title }}={{ '{:,}'.format(i.price) }}円 {% else %}空{% endfor %}",
    "{{ '%05.1f'|format(rate * 100) }} {{ '%s-%s' % (name, plan) }} {{ points // 1000 }} {{ 2 ** 10 }} {{ 'ab' * 3 }}",
    "{{ tags|join(', ') }} {{ name|replace('田', 'だ') }} {{ 'hello world'|title|truncate(8) }} {{ name|e }}",
    "{% macro b(x) %}<b>{{ x }}</b>{% endmacro %}{{ b(name) }}{{ b('&') }}{{ '<i>x</i>'|safe }}",
    "{% set greeting = 'こんにちは、' ~ name %}{{ greeting }}{% set a, b = 1, 2 %}{{ a + b }}{{ [1, 2, 3]|sum }}",
    "{%- for k, v in company|dictsort -%} {{ k }}={{ v }} {%- endfor %}\n\n",
    "{{ items|map(attribute='title')|join('/') }} {{ items|selectattr('price', 'gt', 500)|list|length }}",
    "{{ 'x'|center(9) }}|{{ 'ab'.ljust(5) }}|{{ 'a\nb'|indent(2, true) }}|{{ 'a b c d e f'|wordwrap(3) }}",
    "{% for row in range(6)|batch(4, '-') %}{{ row|join }};{% endfor %}",
    "{% for c in range(5)|slice(2) %}{{ c }}{% endfor %}",
    "{% set ns = namespace(total=0) %}{% for i in items %}{% set ns.total = ns.total + i.price %}{% endfor %}"
    "{{ ns.total }}",
    "{{ '{name}さん'.format(name=name) }}{{ '{0:>6}'.format(plan) }}{{ 3.14159|round(2) }}{{ neg|abs }}",
    "{{ tags }} {{ company }} {{ items[0] }} {{ none }} {{ true }} {{ 1.5 }} {{ range(3)|list }}",
    "{% filter upper %}abc {{ name }}{% endfilter %}{% raw %}{{ not }}{% endraw %}{{ tags|tojson }}",
]


@pytest.mark.parametrize(("source", "limit"), ATTACKS)
def test_every_known_blow_up_stops_at_a_named_limit_without_building_it(source, limit):
    # Loops, huge repetitions and powers, wide formats, doubling in a loop (text, list, number),
    # exponential macros and recursive loops, output repeated by loops: each stops with an error
    # naming the limit, having allocated a few megabytes at most, in HTML and in text templates.
    # (Time is generous here: tracing memory slows the render, and the time limit has its own test.)
    for env in (HTML, PLAIN):
        template = env.from_string(source)
        tracemalloc.start()
        try:
            with pytest.raises(TemplateLimitExceeded, match=limit):
                render(template, FIELDS, RenderBudget(RenderLimits(seconds=60)))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 20_000_000, peak


def test_compiling_an_attack_builds_nothing():
    # Jinja folds constant expressions while compiling; the growing ones are never folded, so merely
    # saving a template cannot build 'x' * 100000000 or 10 ** 10000000.
    tracemalloc.start()
    try:
        PLAIN.from_string("{{ 'x' * 100000000 }}{{ 10 ** 10000000 }}{{ 'y'|center(100000000) }}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, peak


def test_time_limit_follows_the_clock_it_is_given():
    # A render that keeps going past its CPU time stops with the time limit named. The clock is moved
    # by the test (each reading a tenth of a second later), not waited for.
    readings = iter(range(10_000))

    def clock() -> float:
        return next(readings) / 10

    budget = RenderBudget(RenderLimits(seconds=0.5), clock=clock, wall=clock)
    with pytest.raises(TemplateLimitExceeded, match=r"more than 0\.5 seconds"):
        render(PLAIN.from_string("{% for i in range(100) %}{{ i }}{% endfor %}"), FIELDS, budget)


def test_one_budget_covers_every_part_of_a_message_and_the_part_is_named():
    # Subject, text and HTML share one message's budget; the refusal names the part that crossed it.
    limits = RenderLimits(loop_iterations=10)
    loop = PLAIN.from_string("{% for i in range(6) %}.{% endfor %}")
    check_within_limits([("subject", loop)], limits=limits)
    with pytest.raises(TemplateLimitExceeded) as raised:
        check_within_limits([("subject", loop), ("text_body", None), ("html_body", loop)], limits=limits)
    assert str(raised.value) == "html_body: the template runs more than 10 loop iterations (macro calls included)"


def test_ordinary_templates_render_exactly_as_in_the_plain_sandbox():
    # Personal fields, missing fields, if/for over small lists, filters, macros, formatting and
    # autoescaping give byte for byte what the unbounded sandbox gave before the limits.
    for autoescape, bounded in ((False, PLAIN), (True, HTML)):
        plain = SandboxedEnvironment(
            autoescape=autoescape, undefined=ChainableUndefined, keep_trailing_newline=True, cache_size=0
        )
        for source in ORDINARY:
            expected = plain.from_string(source).render(FIELDS)
            assert render(bounded.from_string(source), FIELDS, RenderBudget()) == expected, source


def test_templates_cannot_mutate_their_fields_or_reach_python_internals():
    # The immutable sandbox: list and dict methods that change them are refused, as are dunder attributes.
    with pytest.raises(Exception, match="unsafe"):
        render(PLAIN.from_string("{{ tags.append(1) }}"), FIELDS, RenderBudget())
    with pytest.raises(Exception, match="unsafe"):
        render(PLAIN.from_string("{{ name.__class__.__mro__[1].__subclasses__() }}"), FIELDS, RenderBudget())
