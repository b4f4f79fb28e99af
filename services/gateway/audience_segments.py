"""The console's segment pages: the server-rendered condition builder, preview and save (ListsSegmentsService)."""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from mailblast.v1 import (
    lists_fields_pb2,
    lists_pb2,
    lists_segments_pb2,
)

from services.gateway.audience import (
    FIELD_TYPE_NAMES,
    FORM_ERRORS,
    STATUS_VALUES,
    defined_fields,
)
from services.gateway.clients import BackendError, backends, call
from services.gateway.numbers import form_count, form_id
from services.gateway.security import requires

bp = Blueprint("segments", __name__)


# What the builder offers: condition fields and the operators each takes.
BUILTIN_FIELDS = ("email", "name", "status", "list", "created_at", "subscribed_at")
TEXT_OPS = ("eq", "ne", "contains", "starts_with", "in", "is_empty")
ORDERED_OPS = ("eq", "ne", "gt", "lt", "between", "in", "is_empty")
OPS_BY_KIND = {
    "text": TEXT_OPS,
    "choice": TEXT_OPS,
    "number": ORDERED_OPS,
    "date": ORDERED_OPS,
    "status": ("eq", "ne", "in"),
    "list": ("eq", "ne", "in", "not_in"),
}
ALL_OPS = ("eq", "ne", "contains", "starts_with", "gt", "lt", "between", "in", "not_in", "is_empty")
MAX_GROUPS = 10
MAX_ROWS = 20


def _kind(field: str, defined: dict[str, lists_fields_pb2.CustomField]) -> str:
    if field.startswith("custom:"):
        found = defined.get(field[7:])
        return FIELD_TYPE_NAMES.get(found.type, "text") if found else "text"
    return {"status": "status", "list": "list", "created_at": "date", "subscribed_at": "date"}.get(field, "text")


def read_builder(form: Any) -> dict[str, Any]:
    """The builder's state from its form: a top-level match and groups of rows (field, op, value)."""
    state: dict[str, Any] = {"match": "any" if form.get("match") == "any" else "all", "groups": []}
    for g in range(form_count(form.get("groups"), 1, MAX_GROUPS)):
        group = {"match": "any" if form.get(f"g{g}_match") == "any" else "all", "rows": []}
        for r in range(form_count(form.get(f"g{g}_rows"), 1, MAX_ROWS)):
            prefix = f"g{g}_r{r}_"
            group["rows"].append(
                {
                    "field": form.get(prefix + "field", "email"),
                    "op": form.get(prefix + "op", "eq"),
                    "value": form.get(prefix + "value", ""),
                }
            )
        state["groups"].append(group)
    return state


def _value(row: dict[str, str], kind: str) -> Any:
    text = row["value"].strip()
    op = row["op"]
    if op == "is_empty":
        return True
    if op in ("in", "not_in", "between"):
        return [v.strip() for v in re.split(r"[,、\n]", text) if v.strip()]
    if kind == "number":
        try:
            return float(text) if "." in text else int(text)
        except ValueError:
            return text
    return text


def builder_tree(state: dict[str, Any], defined: dict[str, lists_fields_pb2.CustomField]) -> dict[str, Any]:
    """The condition tree lists compiles (to parameterised SQL) from the builder's rows and groups."""
    groups = []
    for group in state["groups"]:
        conditions = []
        for row in group["rows"]:
            field, kind = row["field"], _kind(row["field"], defined)
            if field.startswith("custom:"):
                condition = {"field": "custom", "key": field[7:], "op": row["op"], "value": _value(row, kind)}
            else:
                condition = {"field": field, "op": row["op"], "value": _value(row, kind)}
            conditions.append(condition)
        if conditions:
            groups.append({"match": group["match"], "conditions": conditions})
    return {"match": state["match"], "conditions": groups}


def builder_state(tree: dict[str, Any]) -> dict[str, Any]:
    """The builder's rows and groups for a saved tree (a condition outside a group gets a group of its own)."""
    state: dict[str, Any] = {"match": tree.get("match", "all"), "groups": []}
    for item in tree.get("conditions", []):
        group = item if "conditions" in item else {"match": "all", "conditions": [item]}
        rows = []
        for cond in group.get("conditions", []):
            if "conditions" in cond:
                continue  # deeper nesting is kept by the API only; the builder shows two levels
            field = f"custom:{cond.get('key')}" if cond.get("field") == "custom" else str(cond.get("field", "email"))
            value = cond.get("value", "")
            if isinstance(value, list):
                text = ", ".join(str(v) for v in value)
            else:
                text = "" if value is True else str(value)
            rows.append({"field": field, "op": str(cond.get("op", "eq")), "value": text})
        state["groups"].append({"match": group.get("match", "all"), "rows": rows or [_blank_row()]})
    if not state["groups"]:
        state["groups"].append({"match": "all", "rows": [_blank_row()]})
    return state


def _blank_row() -> dict[str, str]:
    return {"field": "email", "op": "contains", "value": ""}


def _builder_page(
    state: dict[str, Any], name: str, segment_id: int, preview: Any = None, error: str | None = None, status: int = 200
) -> tuple[str, int]:
    defined = defined_fields()
    available = call(backends().lists.ListLists, lists_pb2.ListListsRequest()).lists
    # The built-in fields' names are translated; a custom field's label is the admin's own text, shown as is.
    choices = [(f, _(f)) for f in BUILTIN_FIELDS] + [(f"custom:{f.key}", f.label or f.key) for f in defined]
    return render_template(
        "segment_builder.html", state=state, name=name, segment_id=segment_id, preview=preview, error=error,
        field_choices=choices, ops=ALL_OPS, lists=available, statuses=list(STATUS_VALUES),
    ), status  # fmt: skip


@bp.get("/segments")
@requires("read")
def segments() -> str:
    """The organisation's segments."""
    found = call(backends().lists_segments.ListSegments, lists_segments_pb2.ListSegmentsRequest()).segments
    return render_template("segments.html", segments=found)


@bp.get("/segments/new")
@requires("send")
def new_segment() -> tuple[str, int]:
    """An empty builder."""
    return _builder_page(builder_state({}), "", 0)


@bp.get("/segments/<id:segment_id>")
@requires("read")
def segment_detail(segment_id: int) -> tuple[str, int]:
    """A saved segment in the builder, with its count and sample."""
    segment = call(backends().lists_segments.GetSegment, lists_segments_pb2.GetSegmentRequest(segment_id=segment_id))
    preview = call(
        backends().lists_segments.PreviewSegment,
        lists_segments_pb2.PreviewSegmentRequest(segment_id=segment_id, sample_size=20),
    )
    return _builder_page(builder_state(json.loads(segment.conditions_json)), segment.name, segment_id, preview)


@bp.post("/segments/build")
@requires("send")
def build_segment() -> Any:
    """The builder's every button: add a row or group, remove a row, preview, save; the page re-renders."""
    state = read_builder(request.form)
    name = request.form.get("name", "").strip()
    segment_id = form_id(request.form.get("segment_id"))
    action = request.form.get("action", "preview")
    if action == "add_group" and len(state["groups"]) < MAX_GROUPS:
        state["groups"].append({"match": "all", "rows": [_blank_row()]})
    elif action.startswith("add_row:"):
        index = int(action.split(":")[1]) if action.split(":")[1].isdigit() else -1
        if 0 <= index < len(state["groups"]) and len(state["groups"][index]["rows"]) < MAX_ROWS:
            state["groups"][index]["rows"].append(_blank_row())
    elif action.startswith("remove_row:"):
        parts = action.split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            g, r = int(parts[1]), int(parts[2])
            if g < len(state["groups"]) and r < len(state["groups"][g]["rows"]):
                del state["groups"][g]["rows"][r]
                if not state["groups"][g]["rows"]:
                    del state["groups"][g]
            if not state["groups"]:
                state["groups"].append({"match": "all", "rows": [_blank_row()]})
    if action not in ("preview", "save"):
        return _builder_page(state, name, segment_id)
    defined = {f.key: f for f in defined_fields()}
    tree = builder_tree(state, defined)
    conditions_json = json.dumps(tree, ensure_ascii=False)
    try:
        if action == "save":
            segment_input = lists_segments_pb2.SegmentInput(name=name, conditions_json=conditions_json)
            if segment_id:
                saved = call(
                    backends().lists_segments.UpdateSegment,
                    lists_segments_pb2.UpdateSegmentRequest(segment_id=segment_id, segment=segment_input),
                )
            else:
                saved = call(backends().lists_segments.CreateSegment, segment_input)
            flash(_("The segment was saved."), "info")
            return redirect(url_for("segments.segment_detail", segment_id=saved.id))
        preview = call(
            backends().lists_segments.PreviewSegment,
            lists_segments_pb2.PreviewSegmentRequest(conditions_json=conditions_json, sample_size=20),
        )
    except BackendError as exc:
        if exc.code not in (*FORM_ERRORS, grpc.StatusCode.NOT_FOUND):
            raise
        return _builder_page(state, name, segment_id, error=exc.message, status=400)
    return _builder_page(state, name, segment_id, preview)


@bp.post("/segments/<id:segment_id>/delete")
@requires("send")
def delete_segment(segment_id: int) -> Response:
    """Remove a segment."""
    call(backends().lists_segments.DeleteSegment, lists_segments_pb2.GetSegmentRequest(segment_id=segment_id))
    flash(_("The segment was deleted."), "info")
    return redirect(url_for("segments.segments"))
