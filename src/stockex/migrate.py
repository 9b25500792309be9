"""Schema migrations (Alembic), shipped inside the package so an installed stockex can migrate.

``upgrade`` is idempotent: on an up-to-date database it applies nothing. ``drift`` lists the
differences between the migrated schema and :mod:`stockex.models` (empty when they agree).
"""

from __future__ import annotations

import functools
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from stockex.db import Database
from stockex.models import Base

SCRIPT_LOCATION = "stockex:migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    if head is None:  # pragma: no cover - the package always ships its migrations
        raise RuntimeError("no migrations found in stockex/migrations")
    return head


def schema_behind(db: Database) -> bool:
    """Whether this code needs ``stockex db upgrade`` first: nothing migrated, or a revision
    before this code's head. A revision this code does not know is newer (a rollback of the
    code after a migration): not behind, the older code keeps serving."""
    current = current_revision(db)
    if current is None:
        return True
    if current == head_revision():
        return False
    return current in {script.revision for script in _scripts().walk_revisions()}


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply every pending migration; returns (revision before, revision after)."""
    before = current_revision(db)
    with db.engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    return before, current_revision(db)


def downgrade(db: Database, revision: str) -> None:
    with db.engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)


def drift(db: Database) -> list[Any]:
    """Alembic autogenerate's differences between the database and the models."""
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))
