"""Alembic's environment: the models the migrations track and how to reach the database.

`api.migrate` runs Alembic in-process and hands over an open connection (in
`config.attributes["connection"]`) inside its own transaction, so several
processes migrating at once wait for each other. Run from the `alembic` command
line (`alembic -c api/alembic.ini ...`), it connects to `sqlalchemy.url` or,
when that is empty, to `RECOVERY_DATABASE_URL` or the embedded SQLite default.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, String, create_engine, pool
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

import api.accounts.models
import api.support.models  # noqa: F401  (registers the tables of support)
import engine.models  # noqa: F401  (registers the engine's tables)
from api.settings import DEFAULT_DATABASE_URL
from api.webhooks import models as webhook_models  # noqa: F401  (registers its tables)
from engine.db import normalise_url

config = context.config
target_metadata = SQLModel.metadata


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Write SQLModel's column types as the plain SQLAlchemy types they stand for.

    A migration is a record of the schema at one point in time: it should not
    import the model library's helper types, which may change or move later.
    `AutoString(n)` is `String(n)`; `UTCDateTime` is a timezone-aware `DateTime`.
    """
    if type_ == "type" and isinstance(obj, AutoString):
        return repr(String(length=obj.impl.length)).replace("String", "sa.String", 1)
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_item=render_item,
        # SQLite cannot ALTER most things: batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = (
        config.get_main_option("sqlalchemy.url")
        or os.environ.get("RECOVERY_DATABASE_URL")
        or DEFAULT_DATABASE_URL
    )
    connectable = create_engine(normalise_url(url), poolclass=pool.NullPool)
    with connectable.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or DEFAULT_DATABASE_URL
    context.configure(
        url=str(normalise_url(url)),
        target_metadata=target_metadata,
        render_item=render_item,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
