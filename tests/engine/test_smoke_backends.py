"""Temporary check that both backends come up."""

from sqlalchemy import text


def test_database_answers(database):
    with database.transaction() as conn:
        assert conn.execute(text("select 1")).scalar_one() == 1
