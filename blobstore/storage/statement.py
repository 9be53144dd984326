"""Queries compiled once and run many times, on Django's connection or on the event loop.

Also the cursors that :class:`~blobstore.storage.orm.ORMStorage` runs its
statements on: they move bytes as bytes, and keep no copy of them.
"""

from __future__ import annotations

import datetime
import itertools
import re
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from blobstore.storage.loop import loop_reader, postgresql_reader

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import QuerySet


class Statement:
    """A query compiled once and run again with new values, as a prepared statement is.

    Compiling a queryset costs more than running it on a key; this keeps the
    SQL and Django's converters, and puts each call's values in the places
    of the marks the query was built with (as the database takes them).
    A reused statement's rows, for small results read on most requests, are
    kept by a server's SQLite loop reader until a commit changes the file
    (:meth:`~blobstore.storage.loop.LoopReader.fetchall_reused`).
    """

    def __init__(self, query: QuerySet[Any], marks: Sequence[Any], *, reused: bool = False) -> None:
        self.using = str(query.db)
        self.reused = reused
        self.compiler = query.query.get_compiler(self.using)
        self.sql, params = self.compiler.as_sql()
        self.params = list(params)
        self.slots = [self.params.index(mark) for mark in marks]
        self.converters = self.compiler.get_converters(
            [column for column, _, _ in self.compiler.select]
        )
        # The databases' own placeholders, for the loop's readers: SQLite's, as
        # Django's SQLite cursor rewrites them, and PostgreSQL's numbered ones.
        self.qmark_sql = with_placeholders(self.sql, lambda _: "?")
        self.numbered_sql = with_placeholders(self.sql, lambda number: f"${number}")

    @property
    def connection(self) -> BaseDatabaseWrapper:
        """Return the wrapper the query was compiled with: for conversions, never for a query."""
        connection: BaseDatabaseWrapper = self.compiler.connection
        return connection

    async def read(self, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Return the rows for values: on the event loop where it may, else on Django's."""
        connection = self.connection
        if connection.vendor == "sqlite" and not in_memory(connection):
            path = str(connection.settings_dict["NAME"])
            params = self.parameters(values)
            if self.reused:
                kept = loop_reader.fetchall_reused(path, self.qmark_sql, params, self.converted)
                if kept is not None:
                    return kept
            else:
                rows = loop_reader.fetchall(path, self.qmark_sql, params)
                if rows is not None:
                    return self.converted(rows)
        elif connection.vendor == "postgresql" and _psycopg3(connection):
            rows = await postgresql_reader.fetchall(
                connection, self.numbered_sql, self.parameters(values)
            )
            if rows is not None:
                return in_django_time(rows)  # binary results are Python values, as in run()
        return await sync_to_async(self.run)(values)

    def run(self, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Return the rows for values, read on Django's connection of this thread."""
        from django.db import connections

        connection = connections[self.using]
        rows = execute(connection, self.sql, self.parameters(values))
        if binary_postgresql(connection):
            # psycopg's binary results are Python values already (jsonb a dict).
            return in_django_time(rows)
        return self.converted(rows)

    def parameters(self, values: Sequence[Any]) -> list[Any]:
        """Return the statement's parameters, values in the places of its marks."""
        params = list(self.params)
        for slot, value in zip(self.slots, values, strict=True):
            params[slot] = value
        return params

    def converted(self, rows: list[Any]) -> list[tuple[Any, ...]]:
        """Return rows as Django's converters make them."""
        if not rows:
            return rows
        return [tuple(row) for row in self.compiler.apply_converters(rows, self.converters)]


def with_placeholders(sql: str, placeholder: Callable[[int], str]) -> str:
    """Return Django's sql with placeholder(n) for its nth %s, and % for each %%."""
    numbers = itertools.count(1)
    return re.sub(
        r"%[s%]", lambda mark: "%" if mark[0] == "%%" else placeholder(next(numbers)), sql
    )


def in_django_time(rows: list[Any]) -> list[Any]:
    """Return psycopg's binary rows with their datetimes as Django gives them.

    psycopg's binary datetimes are aware whatever USE_TZ says.
    """
    if settings.USE_TZ:
        return rows
    return [tuple(naive_local(value) for value in row) for row in rows]


def naive_local(value: Any) -> Any:
    """Return value, if an aware datetime, as Django gives it without USE_TZ: local, naive."""
    if isinstance(value, datetime.datetime) and timezone.is_aware(value):
        return timezone.make_naive(value)
    return value


def in_memory(connection: BaseDatabaseWrapper) -> bool:
    """Return whether connection is to an in-memory SQLite database."""
    return connection.vendor == "sqlite" and bool(connection.is_in_memory_db())  # type: ignore[attr-defined]


def binary_postgresql(connection: BaseDatabaseWrapper) -> bool:
    """Return whether connection is psycopg 3 on PostgreSQL, which can move bytes as bytes.

    Opens the connection as Django's own cursors do: after the health check
    (``CONN_HEALTH_CHECKS``) of a connection kept from an earlier request.
    """
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    return (
        connection.vendor == "postgresql"
        and type(connection.connection).__module__.startswith("psycopg")
        and hasattr(connection.connection, "pgconn")
    )


def cursor_for(connection: BaseDatabaseWrapper, *, binary: bool, streaming: bool = False) -> Any:
    """Return a cursor that moves bytes as bytes and keeps no copy of them.

    Django's own cursors would, with DEBUG on, keep every statement with
    its parameters (whole chunks) in the connection's query log; on
    PostgreSQL they bind parameters on the client, where bytes become text.
    binary is what :func:`binary_postgresql`, which also opens the
    connection, said of it.
    """
    if binary:
        raw = connection.connection
        if streaming:
            return raw.cursor(name=f"blobstore_{uuid.uuid4().hex}", binary=True)
        import psycopg

        return psycopg.Cursor(raw)
    return connection.create_cursor(name=f"blobstore_{uuid.uuid4().hex}" if streaming else None)


def execute(connection: BaseDatabaseWrapper, sql: str, params: list[Any]) -> list[Any]:
    """Run one statement in the connection's current transaction; return its rows, if any."""
    binary = binary_postgresql(connection)
    cursor = cursor_for(connection, binary=binary)
    with connection.wrap_database_errors:
        try:
            cursor.execute(sql, params, **({"binary": True} if binary else {}))
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()


def _psycopg3(connection: BaseDatabaseWrapper) -> bool:
    """Return whether Django's PostgreSQL backend runs on psycopg 3, which connects async too."""
    return getattr(getattr(connection, "Database", None), "__name__", "") == "psycopg"
