"""execute_statements (services/db.py): the hot path's writes, several statements in one transaction (all or
none), on PostgreSQL in one round trip, each bound on the server and, once used a few times on a connection,
prepared there (DB_PREPARE_THRESHOLD)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from apps.agents.services.db import execute_statements
from config.db_pool import prepare_threshold
from tests.security.test_production_settings import manage, production_env

pytestmark = pytest.mark.django_db(transaction=True)

INSERT = ("INSERT INTO auth_group (name) VALUES (%s)", ["writers"])


def postgres() -> bool:
    return connection.vendor == "postgresql"


def test_statements_run_in_order_and_each_returns_its_count_and_rows():
    inserted, renamed, read = execute_statements(
        [
            INSERT,
            ("UPDATE auth_group SET name = %s WHERE name = %s", ["editors", "writers"]),
            ("SELECT name FROM auth_group WHERE name LIKE %s ORDER BY name", ["%itors"]),
        ]
    )
    assert (inserted.rowcount, inserted.rows) == (1, [])
    assert renamed.rowcount == 1
    assert read.rows == [("editors",)]


def test_a_failing_statement_undoes_the_ones_before_it_and_raises_djangos_error():
    with pytest.raises(IntegrityError):  # Django's, as every other query raises it: not the driver's
        execute_statements([INSERT, ("INSERT INTO auth_group (name) VALUES (%s)", ["writers"])])
    assert not Group.objects.exists()  # the first INSERT was rolled back with the second
    execute_statements([INSERT])  # and the connection is usable again
    assert list(Group.objects.values_list("name", flat=True)) == ["writers"]


def test_a_lone_failing_statement_raises_djangos_error_and_leaves_the_connection_usable():
    execute_statements([INSERT])
    with pytest.raises(IntegrityError):  # sent without a pipeline on PostgreSQL: the same error
        execute_statements([INSERT])
    (counted,) = execute_statements([("SELECT count(*) FROM auth_group", [])])
    assert counted.rows == [(1,)]


def test_on_postgresql_the_statements_are_one_round_trip_logged_as_one_query():
    with CaptureQueriesContext(connection) as queries:
        execute_statements([INSERT, ("SELECT count(*) FROM auth_group WHERE name = %s", ["writers"])])
    sent = [q["sql"] for q in queries.captured_queries if q["sql"] not in ("BEGIN IMMEDIATE", "COMMIT")]
    assert len(sent) == (1 if postgres() else 2)  # SQLite runs them one by one, in a transaction
    assert "INSERT INTO auth_group" in sent[0]


def test_on_postgresql_a_statement_used_repeatedly_on_a_connection_is_prepared_there():
    if not postgres():
        pytest.skip(
            "PostgreSQL only: statements are prepared in a PostgreSQL server session, which SQLite does not "
            "have; `.ci/run` runs this test in its PostgreSQL pass"
        )
    statement = ("SELECT count(*) FROM auth_group WHERE name = %s", ["writers"])
    connection.ensure_connection()
    for _ in range(connection.connection.prepare_threshold + 1):
        assert execute_statements([statement])[0].rows == [(0,)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert "SELECT count(*) FROM auth_group WHERE name = $1" in prepared, prepared


@pytest.mark.parametrize(
    ("setting", "threshold"), [("5", 5), ("0", 0), (" 12 ", 12), ("off", None), ("", None), ("None", None)]
)
def test_the_prepare_threshold_setting(setting, threshold):
    assert prepare_threshold(setting) == threshold


@pytest.mark.parametrize("setting", ["-1", "soon"])
def test_a_bad_prepare_threshold_is_refused(setting):
    with pytest.raises(ValueError):
        prepare_threshold(setting)


def test_postgresql_connections_get_the_threshold_and_off_switches_it_off():
    show = "from django.conf import settings; print(settings.DATABASES['default']['OPTIONS']['prepare_threshold'])"
    url = "postgres://postgres@127.0.0.1:5432/never-opened"
    default = manage("shell", "-c", show, env=production_env(SECRET_KEY="x", DATABASE_URL=url))
    off = manage(
        "shell", "-c", show, env=production_env(SECRET_KEY="x", DATABASE_URL=url, DB_PREPARE_THRESHOLD="off")
    )
    assert default.stdout.splitlines()[-1] == "5", default.stderr
    assert off.stdout.splitlines()[-1] == "None", off.stderr
