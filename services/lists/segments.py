"""Segments without SQL: a condition tree (a SegmentCondition as a dict) compiled to parameterised SQL.

No identifier ever comes from the request: columns are chosen from fixed tables here, custom fields
are looked up in the organisation's definitions and their keys passed as parameters to jsonb
operators, and every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from psycopg import sql

from services.common.errors import FailedPrecondition, InvalidArgument, Problem
from services.lists.fields import FieldDef, parse_date, parse_number

MAX_DEPTH = 5
MAX_CONDITIONS = 100
MAX_VALUES = 1000
STATUSES = ("active", "unsubscribed", "error_stopped", "complained", "deleted", "pending")
TEXT_OPS = ("eq", "ne", "contains", "starts_with", "in", "is_empty")
ORDERED_OPS = ("eq", "ne", "gt", "lt", "between", "in", "is_empty")


@dataclass
class Compiled:
    """A boolean SQL expression over `s` with its parameters, and the list ids it refers to."""

    where: sql.Composable
    params: list[Any]
    list_ids: set[int] = field(default_factory=set)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class _Compiler:
    def __init__(self, defs: Mapping[str, FieldDef]) -> None:
        self.defs = defs
        self.params: list[Any] = []
        self.list_ids: set[int] = set()
        self.count = 0

    def p(self, value: Any) -> sql.Composable:
        self.params.append(value)
        return sql.Placeholder()

    def group(self, node: Mapping[str, Any], depth: int) -> sql.Composable:
        if depth > MAX_DEPTH:
            raise InvalidArgument("condition groups nest deeper than %(limit)s", limit=MAX_DEPTH)
        match = node.get("match", "all")
        if match not in ("all", "any"):
            raise InvalidArgument('a group\'s "match" must be "all" or "any"')
        items = node.get("conditions")
        if not isinstance(items, list) or not items:
            raise InvalidArgument('a group needs a non-empty "conditions" array')
        parts = []
        for item in items:
            if not isinstance(item, dict):
                raise InvalidArgument("each condition must be an object")
            parts.append(self.group(item, depth + 1) if "conditions" in item else self.condition(item))
        joiner = sql.SQL(" AND " if match == "all" else " OR ")
        return sql.SQL("({})").format(joiner.join(parts))

    def condition(self, cond: Mapping[str, Any]) -> sql.Composable:
        self.count += 1
        if self.count > MAX_CONDITIONS:
            raise InvalidArgument("a segment has at most %(limit)s conditions", limit=MAX_CONDITIONS)
        name = cond.get("field")
        op = cond.get("op")
        if name == "opened":
            raise FailedPrecondition("engagement conditions need open tracking, which is not available yet")
        if name == "email":
            return self.text(sql.SQL("lower(s.email)"), op, cond, lower=True)
        if name == "name":
            return self.text(sql.SQL("s.name"), op, cond, lower=False)
        if name == "status":
            return self.status(op, cond)
        if name == "created_at":
            return self.ordered(sql.SQL("(s.created_at AT TIME ZONE 'UTC')::date"), op, cond, "date")
        if name == "subscribed_at":
            return self.subscribed(op, cond)
        if name == "list":
            return self.membership(op, cond)
        if name == "custom":
            return self.custom(op, cond)
        raise InvalidArgument(
            "unknown condition field %(field)r: use email, name, status, created_at, subscribed_at, list, custom"
            " or opened",
            field=str(name)[:40],
        )

    @staticmethod
    def value(cond: Mapping[str, Any]) -> Any:
        if "value" not in cond:
            raise InvalidArgument("condition on %(field)r needs a value", field=cond.get("field"))
        return cond["value"]

    @staticmethod
    def values(cond: Mapping[str, Any], exactly: int | None = None) -> list[Any]:
        values = cond.get("value")
        if not isinstance(values, list) or not values or len(values) > MAX_VALUES:
            raise InvalidArgument("condition on %(field)r needs a non-empty array value", field=cond.get("field"))
        if exactly is not None and len(values) != exactly:
            raise InvalidArgument("'between' needs exactly %(count)s values", count=exactly)
        return values

    def text(self, expr: sql.Composable, op: Any, cond: Mapping[str, Any], lower: bool) -> sql.Composable:
        if op not in TEXT_OPS:
            raise InvalidArgument(
                "operator %(operator)r does not apply to text; use %(allowed)s",
                operator=str(op)[:20],
                allowed=", ".join(TEXT_OPS),
            )
        if op == "is_empty":
            return sql.SQL("(coalesce({}, '') = '')").format(expr)
        if op == "in":
            items = [str(v).lower() if lower else str(v) for v in self.values(cond)]
            return sql.SQL("({} = ANY({}::text[]))").format(expr, self.p(items))
        text = str(self.value(cond))
        text = text.lower() if lower else text
        if op == "eq":
            return sql.SQL("({} = {})").format(expr, self.p(text))
        if op == "ne":
            return sql.SQL("({} IS DISTINCT FROM {})").format(expr, self.p(text))
        pattern = _escape_like(text) + "%" if op == "starts_with" else "%" + _escape_like(text) + "%"
        like = sql.SQL("LIKE") if lower else sql.SQL("ILIKE")
        return sql.SQL("({} {} {})").format(expr, like, self.p(pattern))

    def status(self, op: Any, cond: Mapping[str, Any]) -> sql.Composable:
        if op == "in":
            chosen = [str(v) for v in self.values(cond)]
        elif op in ("eq", "ne"):
            chosen = [str(self.value(cond))]
        else:
            raise InvalidArgument("status takes eq, ne or in")
        unknown = [v for v in chosen if v not in STATUSES]
        if unknown:
            raise InvalidArgument(
                "unknown status %(status)r; use %(allowed)s", status=unknown[0][:40], allowed=", ".join(STATUSES)
            )
        neg = sql.SQL("NOT ") if op == "ne" else sql.SQL("")
        return sql.SQL("({}s.status = ANY({}::text[]))").format(neg, self.p(chosen))

    def typed(self, value: Any, kind: str) -> Any:
        try:
            if kind == "date":
                return date.fromisoformat(parse_date(str(value)))
            if isinstance(value, bool):
                raise Problem("%(value)r is not a number", value=value)
            return value if isinstance(value, int | float) else parse_number(str(value))
        except ValueError as exc:
            raise InvalidArgument.of(exc, "condition value: ") from None

    def ordered(self, expr: sql.Composable, op: Any, cond: Mapping[str, Any], kind: str) -> sql.Composable:
        if op not in ORDERED_OPS:
            raise InvalidArgument(
                "operator %(operator)r does not apply here; use %(allowed)s",
                operator=str(op)[:20],
                allowed=", ".join(ORDERED_OPS),
            )
        cast = sql.SQL("::date" if kind == "date" else "::numeric")
        if op == "is_empty":
            return sql.SQL("({} IS NULL)").format(expr)
        if op == "between":
            low, high = (self.typed(v, kind) for v in self.values(cond, exactly=2))
            return sql.SQL("({} BETWEEN {}{} AND {}{})").format(expr, self.p(low), cast, self.p(high), cast)
        if op == "in":
            items = [self.typed(v, kind) for v in self.values(cond)]
            array = sql.SQL("::date[]" if kind == "date" else "::numeric[]")
            return sql.SQL("({} = ANY({}{}))").format(expr, self.p(items), array)
        operator = {"eq": "=", "gt": ">", "lt": "<"}.get(op)
        value = self.p(self.typed(self.value(cond), kind))
        if operator is None:
            return sql.SQL("({} IS DISTINCT FROM {}{})").format(expr, value, cast)
        return sql.SQL("({} {} {}{})").format(expr, sql.SQL(operator), value, cast)

    def list_id(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
            raise InvalidArgument("list id %(value)r is not a number", value=str(value)[:40])
        self.list_ids.add(int(value))
        return int(value)

    def membership(self, op: Any, cond: Mapping[str, Any]) -> sql.Composable:
        if op in ("in", "not_in"):
            ids = [self.list_id(v) for v in self.values(cond)]
        elif op in ("eq", "ne"):
            ids = [self.list_id(self.value(cond))]
        else:
            raise InvalidArgument("list takes eq, ne, in or not_in")
        neg = sql.SQL("NOT ") if op in ("ne", "not_in") else sql.SQL("")
        return sql.SQL(
            "({}EXISTS (SELECT 1 FROM list_subscriptions ls WHERE ls.subscriber_id = s.id"
            " AND ls.list_id = ANY({}::bigint[])))"
        ).format(neg, self.p(ids))

    def subscribed(self, op: Any, cond: Mapping[str, Any]) -> sql.Composable:
        inner = self.ordered(sql.SQL("(ls.created_at AT TIME ZONE 'UTC')::date"), op, cond, "date")
        scope = sql.SQL("")
        if cond.get("list_id") is not None:
            scope = sql.SQL(" AND ls.list_id = {}").format(self.p(self.list_id(cond["list_id"])))
        return sql.SQL("(EXISTS (SELECT 1 FROM list_subscriptions ls WHERE ls.subscriber_id = s.id{} AND {}))").format(
            scope, inner
        )

    def custom(self, op: Any, cond: Mapping[str, Any]) -> sql.Composable:
        key = cond.get("key")
        definition = self.defs.get(key) if isinstance(key, str) else None
        if definition is None:
            raise InvalidArgument("no custom field %(field)r in your organisation", field=str(key)[:64])
        # The key travels as a parameter; only the definition's type picks the SQL shape.
        if definition.type == "number":
            expr = sql.SQL(
                "(CASE WHEN jsonb_typeof(s.attributes -> {}) = 'number' THEN (s.attributes ->> {})::numeric END)"
            )
            return self.ordered(expr.format(self.p(key), self.p(key)), op, cond, "number")
        if definition.type == "date":
            expr = sql.SQL(
                "(CASE WHEN (s.attributes ->> {}) ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}$'"
                " THEN (s.attributes ->> {})::date END)"
            )
            return self.ordered(expr.format(self.p(key), self.p(key)), op, cond, "date")
        return self.text(sql.SQL("(s.attributes ->> {})").format(self.p(key)), op, cond, lower=False)


def compile_tree(tree: Mapping[str, Any], defs: Mapping[str, FieldDef]) -> Compiled:
    """Compile a condition tree to a WHERE expression over subscribers `s`; refuse a malformed tree."""
    compiler = _Compiler(defs)
    where = compiler.group(tree, 1)
    return Compiled(where, compiler.params, compiler.list_ids)
