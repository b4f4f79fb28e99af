"""Lists' SQL for saved segments (their condition trees are compiled by segments.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import NotFound

COLUMNS = "id, name, conditions, created_at, updated_at"
# bandit B608: built only from this module's constant SQL (column lists, joins); every value is a %s parameter
INSERT_SEGMENT = f"INSERT INTO segments (organization_id, name, conditions) VALUES (%s, %s, %s) RETURNING {COLUMNS}"  # nosec B608
SELECT_SEGMENTS = f"""
SELECT {COLUMNS} FROM segments WHERE organization_id = %(org)s
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[])) ORDER BY id
"""  # nosec B608
UPDATE_SEGMENT = f"""
UPDATE segments SET name = %s, conditions = %s, updated_at = now() WHERE organization_id = %s AND id = %s
RETURNING {COLUMNS}
"""  # nosec B608
DELETE_SEGMENT = "DELETE FROM segments WHERE organization_id = %s AND id = %s RETURNING id"


@dataclass(frozen=True)
class SegmentRow:
    """A saved segment and its condition tree."""

    id: int
    name: str
    conditions: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class SegmentStore:
    """The segments table."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def create(self, org: int, name: str, tree: dict) -> SegmentRow:
        """Save a segment."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(SegmentRow))
            await cur.execute(INSERT_SEGMENT, (org, name, json.dumps(tree, ensure_ascii=False)))
            return await cur.fetchone()

    async def segments(self, org: int, segment_ids: Sequence[int] | None = None) -> list[SegmentRow]:
        """The organisation's segments (or those asked for)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(SegmentRow))
            await cur.execute(SELECT_SEGMENTS, {"org": org, "ids": None if segment_ids is None else list(segment_ids)})
            return await cur.fetchall()

    async def update(self, org: int, segment_id: int, name: str, tree: dict) -> SegmentRow:
        """Replace a segment's name and conditions."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(SegmentRow))
            await cur.execute(UPDATE_SEGMENT, (name, json.dumps(tree, ensure_ascii=False), org, segment_id))
            row = await cur.fetchone()
        if row is None:
            raise NotFound("no segment %(segment)s in your organisation", segment=segment_id)
        return row

    async def delete(self, org: int, segment_id: int) -> None:
        """Remove a segment."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(DELETE_SEGMENT, (org, segment_id))
            if await cur.fetchone() is None:
                raise NotFound("no segment %(segment)s in your organisation", segment=segment_id)
