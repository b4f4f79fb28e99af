"""Campaign templates rendered in a Jinja2 sandbox with limits: loop iterations, output, value sizes and time.

Over 400 lines, on purpose: every hook of the sandbox enforces the same budget, and a hook left out is a
way past it; they are reviewed together, in one file.

A template is a program its author runs on our machines, so every render gets a budget (`RenderBudget`):
so many loop iterations (macro calls count as iterations), so many characters of output, so many CPU
seconds. The sandbox's hooks enforce it as the render goes, and refuse an operation before it runs when
its result would be too large: `*` and `**` (``'x'*100000000``, ``9**9**9``), ``%`` and ``str.format``
with huge widths, joins, replaces and padding. Every value a template builds (concatenations, literals,
call and filter results) is measured against the same ceiling, so no value can grow past it by doubling
in a loop. Constant folding at compile time is off for anything that could grow (the intercepted
operators, the filters), so a template cannot exhaust the process when it is merely compiled.

The sender, the campaigns service (when a campaign is saved or sent) and the console's preview use the
same limits, so a template accepted at save time renders at send time, and one that breaks them is
refused with a message naming the limit before it reaches a sender.
"""

from __future__ import annotations

import contextvars
import functools
import re
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, Set, ValuesView
from dataclasses import dataclass
from string import Formatter
from typing import Any

from jinja2 import ChainableUndefined, Template, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context, LoopContext, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace
from markupsafe import Markup

from services.common.errors import Problem


@dataclass(frozen=True)
class RenderLimits:
    """What one message's render may use, all its parts (subject, text, HTML) together."""

    loop_iterations: int = 10_000
    # Also the ceiling of any one value a template builds (characters of a text, items of a list).
    output_chars: int = 1_000_000
    # CPU time of the rendering thread, so a busy machine does not make a template fail.
    seconds: float = 0.5
    number_digits: int = 1_000


LIMITS = RenderLimits()
# The fields a campaign is tried with when it is saved, sent or previewed (a subscriber's own fields
# may still take a template over a limit: the sender checks every render).
SAMPLE_FIELDS: Mapping[str, Any] = {"name": "山田 太郎", "email": "sample@example.com"}


class TemplateLimitExceeded(Problem):
    """A render went over one of its limits; the message names the limit."""


def _loops_exceeded(limit: int) -> TemplateLimitExceeded:
    return TemplateLimitExceeded(
        "the template runs more than %(limit)s loop iterations (macro calls included)", limit=limit
    )


def _output_exceeded(limit: int) -> TemplateLimitExceeded:
    return TemplateLimitExceeded("the template produces more than %(limit)s characters", limit=limit)


def _value_exceeded(limit: int) -> TemplateLimitExceeded:
    return TemplateLimitExceeded("the template builds a value of more than %(limit)s characters or items", limit=limit)


def _time_exceeded(limit: float) -> TemplateLimitExceeded:
    return TemplateLimitExceeded("the template takes more than %(limit)s seconds to render", limit=limit)


def _number_exceeded(limit: int) -> TemplateLimitExceeded:
    return TemplateLimitExceeded("the template computes a number of more than %(limit)s digits", limit=limit)


class RenderBudget:
    """One message's allowance, spent by the sandbox's hooks while its parts render.

    Time is the rendering thread's CPU time, so a busy machine does not make a template fail. Reading
    that clock is a system call, so it is read only once the (cheap) wall clock says the time could be
    up: CPU time never runs ahead of wall time.
    """

    def __init__(
        self,
        limits: RenderLimits = LIMITS,
        clock: Callable[[], float] = time.thread_time,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._wall = wall
        self._started = clock()
        self._look_at = wall() + limits.seconds
        self._iterations = 0
        self._output = 0
        self._max_bits = int(limits.number_digits * 3.33) + 1

    def step(self) -> None:
        """Stop the render once its time is up."""
        now = self._wall()
        if now < self._look_at:
            return
        used = self._clock() - self._started
        if used > self.limits.seconds:
            raise _time_exceeded(self.limits.seconds)
        # The thread waited for the CPU meanwhile: the rest of its time cannot run out sooner than this.
        self._look_at = now + (self.limits.seconds - used)

    def iteration(self) -> None:
        """Count one loop iteration or macro call."""
        self._iterations += 1
        if self._iterations > self.limits.loop_iterations:
            raise _loops_exceeded(self.limits.loop_iterations)
        self.step()

    def output(self, value: Any) -> None:
        """Count what the template writes out."""
        self._output += self.size(value)
        if self._output > self.limits.output_chars:
            raise _output_exceeded(self.limits.output_chars)
        self.step()

    def room(self) -> int:
        """Characters the render may still write out."""
        return self.limits.output_chars - self._output

    def written(self, chars: int) -> None:
        """Count characters written out by a renderer that goes around the sandbox (within `room()`)."""
        self._output += chars

    def reserve(self, size: int) -> None:
        """Refuse, before it is built, a value that would be larger than any value may be."""
        if size > self.limits.output_chars:
            raise _value_exceeded(self.limits.output_chars)

    def checked(self, value: Any) -> Any:
        """The value, once it is known to be within the value ceiling."""
        self.size(value)
        return value

    def check_bits(self, bits: int) -> None:
        """Refuse, before it is computed, an integer with too many digits."""
        if bits > self._max_bits:
            raise _number_exceeded(self.limits.number_digits)

    def size(self, value: Any) -> int:
        """Characters of a text, or items of a container counted all the way down; raises past the ceiling."""
        kind = type(value)
        if kind is str or kind is Markup or kind is bytes:
            size = len(value)
        elif kind is int:
            size = _digits(value)
        elif kind in _SCALARS:
            return 1
        else:
            size = self._deep_size(value, {}, 0)
        if size > self.limits.output_chars:
            raise _value_exceeded(self.limits.output_chars)
        return size

    def _deep_size(self, value: Any, seen: dict[int, int], depth: int) -> int:
        # Counted, not measured by its repr: a list holding another twice, thirty times over, is tiny in
        # memory but prints to gigabytes. A part shared by several others counts each time it appears
        # (but is walked once); a part that contains itself prints as [...] and counts once.
        if isinstance(value, str | bytes):
            return len(value)
        if isinstance(value, int):
            return _digits(value)
        if isinstance(value, range | Undefined):
            return 1
        if isinstance(value, Mapping):
            children: Iterable[Any] = (*value.keys(), *value.values())
        elif isinstance(value, list | tuple | Set | ItemsView | ValuesView):
            children = value
        elif isinstance(value, Namespace):
            children = value._Namespace__attrs.values()
        else:
            return 1
        key = id(value)
        if key in seen:
            return seen[key]
        if depth > _MAX_DEPTH:
            raise _value_exceeded(self.limits.output_chars)
        seen[key] = 1
        cap = self.limits.output_chars
        total = 1
        for child in children:
            kind = type(child)
            if kind is str or kind is Markup:
                total += len(child)
            elif kind is int:
                total += _digits(child)
            elif kind in _SCALARS:
                total += 1
            else:
                total += self._deep_size(child, seen, depth + 1)
            if total > cap:
                raise _value_exceeded(cap)
        seen[key] = total
        return total


_SCALARS = frozenset({float, bool, type(None)})
_MAX_DEPTH = 100


def _digits(number: int) -> int:
    """About as many characters as the integer prints to."""
    return 1 + number.bit_length() * 3 // 10


_BUDGET: contextvars.ContextVar[RenderBudget] = contextvars.ContextVar("mailblast_render_budget")


def _budget() -> RenderBudget:
    try:
        return _BUDGET.get()
    except LookupError:
        raise RuntimeError("bounded templates render only through services.common.templating.render") from None


# -------------------------------------------------------------------------------------- the checks

_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
_SPEC_NUMBERS = re.compile(r"\d+")
# str methods that multiply their input, refused outright (no mail template needs them).
_MULTIPLYING_METHODS = frozenset({"expandtabs", "translate", "maketrans"})
# Methods whose integer arguments are the size of what they build.
_SIZED_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "to_bytes"})


def _check_printf(budget: RenderBudget, template: str, args: Any) -> None:
    """Refuse `template % args` when its widths and values add up to more than a value may hold."""
    reserved = len(template) + budget.size(args)
    for width, precision, _ in _PRINTF_SPEC.findall(template):
        if "*" in (width, precision):
            raise TemplateLimitExceeded("a formatting width taken from a value (*) is not allowed in templates")
        reserved += max(int(width or 0), int(precision or 0))
        budget.reserve(reserved)


def _check_repeat(budget: RenderBudget, left: Any, right: Any) -> None:
    """Refuse a repetition (``'x' * n``) or a product of integers too large to build."""
    if isinstance(left, int) and not isinstance(left, bool) and isinstance(right, int) and not isinstance(right, bool):
        budget.check_bits(left.bit_length() + right.bit_length())
        return
    for sequence, times in ((left, right), (right, left)):
        if isinstance(times, int) and isinstance(sequence, str | bytes | list | tuple):
            budget.reserve(budget.size(sequence) * max(times, 0))


def _check_power(budget: RenderBudget, base: Any, exponent: Any) -> None:
    """Refuse an integer power with too many digits (``9**9**9``)."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        budget.check_bits(base.bit_length() * exponent)


def _check_join(budget: RenderBudget, separator: Any, items: list[Any]) -> None:
    budget.reserve(sum(budget.size(item) for item in items) + len(separator or "") * max(len(items) - 1, 0))


def _check_replace(budget: RenderBudget, text: Any, old: Any, new: Any, count: Any = None) -> None:
    if not isinstance(text, str | bytes) or not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return
    found = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    budget.reserve(len(text) + found * max(len(new) - len(old), 0))


class _BoundedFormatter(SandboxedFormatter):
    """str.format in templates, refusing widths that add up to more than a value may hold."""

    def __init__(self, env: Any, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._reserved = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        """Format one field once its width is known to fit."""
        budget = _budget()
        widths = [int(n) for n in _SPEC_NUMBERS.findall(format_spec)]
        self._reserved += max(widths, default=0) + budget.size(value)
        budget.reserve(self._reserved)
        return super().format_field(value, format_spec)


class _BoundedEscapeFormatter(_BoundedFormatter, SandboxedEscapeFormatter):
    """The same for a Markup format string (HTML autoescaped)."""


def _iterated(budget: RenderBudget, iterable: Any) -> Iterator[Any]:
    for item in iterable:
        budget.iteration()
        yield item


def _filter_checks(budget: RenderBudget, name: str, value: Any, args: tuple, kwargs: dict) -> Any:
    """Refuse a filter call whose result would be too large; returns the value to filter."""

    def argument(position: int, keyword: str, default: Any) -> Any:
        return args[position] if len(args) > position else kwargs.get(keyword, default)

    if name == "format":
        _check_printf(budget, str(value), kwargs or args)
    elif name == "join":
        value = value if isinstance(value, str) else list(value)
        separator = argument(0, "d", "")
        _check_join(budget, separator if isinstance(separator, str) else "", list(value))
    elif name == "replace":
        _check_replace(budget, str(value), argument(0, "old", ""), argument(1, "new", ""), argument(2, "count", None))
    elif name == "center":
        budget.reserve(_int(argument(0, "width", 80)))
    elif name == "batch":
        budget.reserve(_int(argument(0, "linecount", 1)))
    elif name == "slice":
        budget.reserve(_int(argument(0, "slices", 1)))
    elif name == "indent":
        width = argument(0, "width", 4)
        pad = len(width) if isinstance(width, str) else _int(width)
        text = str(value)
        budget.reserve(len(text) + (text.count("\n") + 1) * pad)
    elif name == "wordwrap":
        text, wrap = str(value), argument(2, "wrapstring", None) or "\n"
        budget.reserve(len(text) + (len(text) // max(_int(argument(0, "width", 79)), 1) + 1) * len(str(wrap)))
    elif name == "sum" and not isinstance(argument(1, "start", 0), int | float):
        raise TemplateLimitExceeded("the sum filter adds numbers only in templates")
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that spends the render's budget and refuses results that would be too large.

    Taking the context also keeps Jinja from running the filter at compile time on constants.
    """
    passes = getattr(getattr(function, "jinja_pass_arg", None), "name", None)

    def bounded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        value = _filter_checks(budget, name, value, args, kwargs)
        if passes == "context":
            result = function(context, value, *args, **kwargs)
        elif passes == "eval_context":
            result = function(context.eval_ctx, value, *args, **kwargs)
        elif passes == "environment":
            result = function(context.environment, value, *args, **kwargs)
        else:
            result = function(value, *args, **kwargs)
        return budget.checked(result)

    bounded.__name__ = bounded.__qualname__ = f"bounded_{name}"
    return pass_context(bounded)


@pass_context
def _finalize(context: Context, value: Any) -> Any:
    _budget().output(value)
    return value


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles templates so that loops, output and the values they build go through the budget."""

    def visit_Output(self, node: nodes.Output, frame: Frame) -> None:
        """Static text is output through finalize too, so text repeated by a loop counts as output."""
        node.nodes = [
            nodes.MarkSafeIfAutoescape(child, lineno=child.lineno) if isinstance(child, nodes.TemplateData) else child
            for child in node.nodes
        ]
        super().visit_Output(node, frame)

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        """Each item a loop takes counts as an iteration."""
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("iterated", lineno=node.lineno), [node.iter], [], None, None, lineno=node.lineno
        )
        super().visit_For(node, frame)

    def _checked(self, visit: Callable[[Any, Frame], None], node: nodes.Node, frame: Frame) -> None:
        self.write("environment.checked(")
        visit(node, frame)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        """``a ~ b`` is measured, so doubling a text in a loop stops at the value ceiling."""
        self._checked(super().visit_Concat, node, frame)

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        """A list literal is measured: nesting one in another is how a tiny value prints to gigabytes."""
        self._checked(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        """A dict literal is measured like a list."""
        self._checked(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        """A tuple literal is measured like a list; a tuple being assigned to is a target, not a value."""
        if node.ctx == "load":
            self._checked(super().visit_Tuple, node, frame)
        else:
            super().visit_Tuple(node, frame)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox whose hooks spend the render's budget and refuse oversized results."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, autoescape: bool) -> None:
        # ChainableUndefined: a field a subscriber lacks (even {{ company.name }}) renders empty, never raises.
        super().__init__(
            autoescape=autoescape,
            undefined=ChainableUndefined,
            keep_trailing_newline=True,
            cache_size=0,
            finalize=_finalize,
        )
        self.filters = {name: _bounded_filter(name, function) for name, function in self.filters.items()}
        # Words by the thousand from one call: not something a mail needs.
        self.globals.pop("lipsum", None)

    def iterated(self, iterable: Any) -> Iterator[Any]:
        """The loop's items, each counted as an iteration."""
        return _iterated(_budget(), iterable)

    def checked(self, value: Any) -> Any:
        """A value the template built, within the value ceiling."""
        return _budget().checked(value)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """Also refuse the str methods that multiply their input."""
        if isinstance(obj, str | bytes) and attr in _MULTIPLYING_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """``+ * ** %``, refused before they build something too large."""
        budget = _budget()
        budget.step()
        if operator == "*":
            _check_repeat(budget, left, right)
        elif operator == "**":
            _check_power(budget, left, right)
        elif operator == "%" and isinstance(left, str):
            _check_printf(budget, left, right)
        elif operator == "+" and not isinstance(left, int | float):
            budget.reserve(budget.size(left) + budget.size(right))
        return budget.checked(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Every call from a template: macros and recursive loops count as iterations, results are measured."""
        budget = _budget()
        budget.step()
        if isinstance(obj, LoopContext) and args:
            # loop(children) in a recursive loop: another loop, whose items count too.
            budget.iteration()
            args = (_iterated(budget, args[0]), *args[1:])
        elif isinstance(obj, Macro):
            budget.iteration()
        else:
            args = self._checked_method_args(budget, obj, args, kwargs)
        return budget.checked(super().call(context, obj, *args, **kwargs))

    @staticmethod
    def _checked_method_args(budget: RenderBudget, method: Any, args: tuple, kwargs: dict) -> tuple:
        """Refuse a str/bytes/int method call whose result would be too large; returns the arguments to use."""
        owner = getattr(method, "__self__", None)
        name = getattr(method, "__name__", "")
        if not isinstance(owner, str | bytes | int) or isinstance(owner, bool):
            return args
        if name in _SIZED_METHODS:
            for size in (*args, *kwargs.values()):
                if isinstance(size, int) and not isinstance(size, bool):
                    budget.reserve(size)
        elif name == "join" and args and isinstance(owner, str | bytes):
            items = list(args[0])
            _check_join(budget, owner, items)
            args = (items, *args[1:])
        elif name == "replace" and isinstance(owner, str | bytes):
            _check_replace(budget, owner, *args, **{k: v for k, v in kwargs.items() if k == "count"})
        return args

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and format_map, with their widths checked against the value ceiling."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template: str = value.__self__
        formatter: Formatter = (
            _BoundedEscapeFormatter(self, escape=template.escape)
            if isinstance(template, Markup)
            else _BoundedFormatter(self)
        )

        @functools.wraps(wrapped)
        def formatted(*args: Any, **kwargs: Any) -> str:
            if value.__name__ == "format_map":
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return type(template)(formatter.vformat(template, args, kwargs))

        return formatted


PLAIN = BoundedEnvironment(autoescape=False)
HTML = BoundedEnvironment(autoescape=True)


def render(template: Template, fields: Mapping[str, Any], budget: RenderBudget) -> str:
    """Render a template compiled by PLAIN or HTML, spending `budget`; raises TemplateLimitExceeded."""
    token = _BUDGET.set(budget)
    try:
        parts = []
        for chunk in template.generate(fields):
            parts.append(chunk)
            budget.step()
        return "".join(parts)
    finally:
        _BUDGET.reset(token)


def check_within_limits(
    parts: Iterable[tuple[str, Template | None]],
    fields: Mapping[str, Any] = SAMPLE_FIELDS,
    limits: RenderLimits = LIMITS,
) -> None:
    """Render compiled parts, in order and on one budget, with sample fields; raise on a limit, naming the part.

    Other failures are left alone: they may come from the sample fields, not from the template.
    """
    budget = RenderBudget(limits)
    for part, template in parts:
        if template is None:
            continue
        try:
            render(template, fields, budget)
        except TemplateLimitExceeded as exc:
            raise TemplateLimitExceeded.of(exc, "%(part)s: ", part=part) from None
        except Exception:  # noqa: S112 - a runtime error with sample data says nothing about the limits
            continue
