"""Lists' SQL for custom field definitions."""

from __future__ import annotations

import json

from psycopg_pool import AsyncConnectionPool

from services.common.errors import InvalidArgument, NotFound
from services.lists.fields import FieldDef
from services.lists.imports import field_defs

INSERT_FIELD = """
INSERT INTO custom_fields (organization_id, key, label, type, options) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING RETURNING id
"""
DELETE_FIELD = "DELETE FROM custom_fields WHERE organization_id = %s AND id = %s RETURNING key"


class FieldStore:
    """The custom_fields table."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def defs(self, organization_id: int) -> dict[str, FieldDef]:
        """The organisation's custom fields by key."""
        async with self.pool.connection() as conn:
            return await field_defs(conn, organization_id)

    async def create_field(self, org: int, key: str, label: str, type_: str, options: list[str]) -> FieldDef:
        """Define a field; a key in use is refused."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(INSERT_FIELD, (org, key, label, type_, json.dumps(options, ensure_ascii=False)))
            row = await cur.fetchone()
        if row is None:
            raise InvalidArgument("a field %(field)r exists already", field=key)
        return FieldDef(row[0], key, label, type_, tuple(options))

    async def delete_field(self, org: int, field_id: int) -> str:
        """Remove a field definition (values stay in attributes as free text); returns its key."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(DELETE_FIELD, (org, field_id))
            row = await cur.fetchone()
        if row is None:
            raise NotFound("no field %(field)s in your organisation", field=field_id)
        return row[0]
