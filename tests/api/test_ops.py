"""Operations: /health, /ready, /metrics, the in-process mail dispatcher, the 500 answer,
and logging without secrets (the access log and the redacting filter).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from api import migrate
from api.accounts.passwords import Argon2Hasher
from api.logs import (
    ACCESS_LOGGER,
    LINE_FORMAT,
    RedactingFilter,
    RedactingFormatter,
    configure_logging,
    escape,
    redact,
)
from api.settings import Settings, SettingsError, settings_from_env
from api.web.app import create_app
from tests.api.conftest import Api, api_settings, assert_error

# Nothing listens on port 1: connecting is refused at once.
UNREACHABLE_DB = "postgresql://nobody@127.0.0.1:1/nothing"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# -- health and readiness ----------------------------------------------------------------------


def test_health_answers_200_whatever_host_name_reaches_it(api: Api) -> None:
    for host in ("testserver.local", "10.0.0.7:8000", "pod-1234"):
        answer = api.client.get("/health", headers={"Host": host})
        assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


def test_ready_is_503_until_migrations_are_applied_then_200(
    empty_db_url: str, tmp_path: Path
) -> None:
    settings = api_settings(empty_db_url, tmp_path / "mail")
    app = create_app(settings, hasher=Argon2Hasher.for_tests())
    with TestClient(app) as client:
        answer = client.get("/ready")
        assert answer.status_code == 503
        assert answer.json() == {"status": "unavailable", "database": True, "migrations": False}
        migrate.upgrade(empty_db_url)
        answer = client.get("/ready")
        assert (answer.status_code, answer.json()) == (
            200,
            {"status": "ok", "database": True, "migrations": True},
        )


def test_ready_is_503_when_the_database_does_not_answer(tmp_path: Path) -> None:
    settings = Settings(database_url=UNREACHABLE_DB, mail_url=f"file://{tmp_path}")
    with TestClient(create_app(settings, hasher=Argon2Hasher.for_tests())) as client:
        answer = client.get("/ready")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unavailable", "database": False, "migrations": False}


def test_a_database_outage_is_a_503_to_retry_and_its_log_names_only_the_error_type(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database_url=UNREACHABLE_DB, mail_url=f"file://{tmp_path}")
    with TestClient(create_app(settings, hasher=Argon2Hasher.for_tests())) as client:
        answer = client.post("/api/recovery", json={"email": "someone@example.com"})
    error = assert_error(answer, 503, "unavailable")
    assert answer.headers["retry-after"] == "5"
    assert error["details"] == [] and "127.0.0.1" not in answer.text
    [logged] = [r for r in caplog.records if r.name == "api.errors"]
    assert "OperationalError" in logged.getMessage()
    assert "someone@example.com" not in logged.getMessage()
    assert "nobody" not in logged.getMessage()  # the connection string stays out


# -- metrics -----------------------------------------------------------------------------------


METRICS_TOKEN = "a-metrics-token-only-the-scraper-knows"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.fixture
def scraped(make_api: Callable[..., Api]) -> Api:
    """An application whose /metrics answers to the scraper's bearer token."""
    return make_api(metrics_token=METRICS_TOKEN)


def test_metrics_report_attempts_by_state_transitions_queue_depth_and_mail_latency(
    scraped: Api,
) -> None:
    api = scraped
    api.account()
    api.client.post("/api/recovery", json={"email": "jane.doe@example.com"})
    api.client.post("/api/recovery", json={"email": "nobody@example.com"})
    before = _samples(api.client.get("/metrics", headers=SCRAPER).text)
    assert before[("recovery_dispatch_queue_depth", ())] == 2
    api.dispatch()  # the app's own dispatcher, as `recovery serve` runs it
    answer = api.client.get("/metrics", headers=SCRAPER)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    metrics = _samples(answer.text)
    flow = ("flow", "password_recovery")

    def state(name: str) -> float:
        return metrics[("recovery_attempts", (flow, ("state", name)))]

    assert (state("emailed"), state("unknown_account"), state("requested")) == (1, 1, 0)
    dispatched = ("recovery_transitions_total", (("accepted", "true"), ("event", "dispatch"), flow))
    assert metrics[dispatched] == 2
    assert metrics[("recovery_dispatch_queue_depth", ())] == 0
    sent = (("outcome", "sent"),)
    assert metrics[("recovery_mail_send_seconds_count", sent)] == 1
    assert metrics[("recovery_mail_send_seconds_sum", sent)] > 0


def test_each_app_has_its_own_metrics_registry(make_api: Callable[..., Api]) -> None:
    first, second = make_api(metrics_token=METRICS_TOKEN), make_api(metrics_token=METRICS_TOKEN)
    first.account()
    first.link_token()
    count = ("recovery_mail_send_seconds_count", (("outcome", "sent"),))
    assert _samples(first.client.get("/metrics", headers=SCRAPER).text)[count] == 1
    assert count not in _samples(second.client.get("/metrics", headers=SCRAPER).text)


def test_without_a_token_or_a_listener_metrics_are_not_served_so_they_tell_nothing(
    api: Api,
) -> None:
    """The default: /metrics is a 404 in the error shape, before and after a request for a
    known and for an unknown address alike, so reading it tells nobody whether an
    address has an account (SPEC §9)."""
    api.account()
    answers = [api.client.get("/metrics")]
    for address in ("jane.doe@example.com", "nobody@example.com"):
        api.client.post("/api/recovery", json={"email": address})
        api.dispatch()
        answers.append(api.client.get("/metrics"))
    for answer in answers:
        assert_error(answer, 404, "not_found")
    assert len({a.content for a in answers}) == 1
    assert "recovery_attempts" not in answers[-1].text


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token-of-some-length",
        f"Basic {METRICS_TOKEN}",
        f"Bearer {METRICS_TOKEN}x",
    ],
)
def test_with_a_token_metrics_answer_only_to_that_bearer_token(
    scraped: Api, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    refused = scraped.client.get("/metrics", headers=headers)
    assert_error(refused, 401, "unauthorized")
    assert "recovery_" not in refused.text
    assert scraped.client.get("/metrics", headers=SCRAPER).status_code == 200


def test_a_metrics_token_too_short_to_be_a_secret_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="RECOVERY_METRICS_TOKEN"):
        settings_from_env(database_url=f"sqlite:///{tmp_path / 'x.db'}", metrics_token="short")
    with pytest.raises(SettingsError, match="RECOVERY_METRICS_LISTEN"):
        settings_from_env(database_url=f"sqlite:///{tmp_path / 'x.db'}", metrics_listen="9100")


def test_a_scrape_reads_the_running_totals_never_the_attempts_or_the_event_log(
    scraped: Api,
) -> None:
    """However many attempts and events are stored, a scrape reads the few rows of the
    running totals (and the outbox's pending items), so its cost is O(states)."""
    api = scraped
    api.account()
    for n in range(5):
        api.client.post("/api/recovery", json={"email": f"person-{n}@example.com"})
    api.dispatch()
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.lower())

    db_engine = api.services.engine.db.engine
    event.listen(db_engine, "before_cursor_execute", seen)
    try:
        assert api.client.get("/metrics", headers=SCRAPER).status_code == 200
    finally:
        event.remove(db_engine, "before_cursor_execute", seen)
    reads = [s for s in statements if s.lstrip().startswith("select")]
    assert reads and any("flow_tally" in s for s in reads)
    assert not [s for s in reads if "attempt_event" in s or re.search(r"\battempt\b", s)]


# -- the dispatcher inside the server ----------------------------------------------------------


def test_run_dispatcher_emails_requests_in_the_background_and_stops_on_shutdown(
    db_url: str, tmp_path: Path
) -> None:
    settings = api_settings(db_url, tmp_path / "mail", dispatch_poll_seconds=0.05)
    app = create_app(settings, run_worker=True, hasher=Argon2Hasher.for_tests())
    services = app.state["services"]
    services.accounts.create_sync(
        email="jane.doe@example.com", name="Jane Doe", password="Correct-Horse-Battery-42"
    )
    with TestClient(app) as client:
        assert client.post("/api/recovery", json={"email": "jane.doe@example.com"}).status_code
        deadline = time.monotonic() + 10
        while not list((tmp_path / "mail").glob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list((tmp_path / "mail").glob("*.eml"))) == 1
    # Shutdown stopped the task and closed the database the app built itself.
    with pytest.raises(RuntimeError, match="shutdown"):
        asyncio.run(services.engine.db.run(lambda: None))


# -- logging -----------------------------------------------------------------------------------


def test_the_access_log_leaves_out_query_strings_and_escapes_line_breaks(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    token = "Tk" * 22
    answer = api.client.get(f"/recovery/reset?token={token}")
    api.client.get("/api/nothing%0D%0AFAKE%20200%20line")
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(lines) == 2
    assert lines[0].startswith("GET /recovery/reset ") and token not in lines[0]
    assert f"id={answer.headers['x-request-id']}" in lines[0]
    assert "\r" not in lines[1] and "\n" not in lines[1]
    assert "\\r\\nFAKE 200 line" in lines[1] and " 404 " in lines[1]


def test_redaction_hides_anything_that_looks_like_a_secret() -> None:
    token = "abcDEF123_-" * 4
    argon = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
    text = (
        f"GET /recovery/reset?token={token} Authorization: Bearer sk_live_1 "
        f'{{"password": "Hunter2!!", "password_confirm":"Hunter2!!"}} hash {argon} '
        f"digest {'ab' * 32}"
    )
    cleaned = redact(text)
    for secret in (token, "sk_live_1", "Hunter2!!", argon, "ab" * 32):
        assert secret not in cleaned
    assert "GET /recovery/reset?token=[redacted]" in cleaned
    assert redact("attempt 0b7c9a4e-2f7e-4c36-9b1e-3f0e2a1d9c55 emailed") == (
        "attempt 0b7c9a4e-2f7e-4c36-9b1e-3f0e2a1d9c55 emailed"
    )
    assert escape("a\r\nb\x00c") == "a\\r\\nb\\x00c"


def test_the_filter_and_formatter_redact_messages_arguments_and_tracebacks() -> None:
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "login with %s", ("password=Hunter2!!",), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "login with password=[redacted]"
    try:
        raise ValueError("token=" + "Z" * 43)
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    assert "Z" * 43 not in RedactingFormatter().format(failed)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access = logging.getLogger("uvicorn.access")
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    access.disabled = False
    access.propagate = True


def test_configure_logging_writes_redacted_lines_and_silences_uvicorns_access_log(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")
    configure_logging("INFO")  # idempotent: one handler, not two
    logging.getLogger("api.test").info("session Bearer %s", "s3cr3t-session")
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /recovery/reset?token=abc"')
    logging.getLogger("api.test").debug("not at INFO")
    err = capsys.readouterr().err
    assert err.count("api.test") == 1
    assert "Bearer [redacted]" in err and "s3cr3t-session" not in err
    assert "token=abc" not in err


ACCESS_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO recovery\.access: "
    r"(GET /api/nothing/\S+) 404 \d+\.\dms id=([0-9a-f]{16})$"
)


def test_access_log_records_are_the_loggers_own_and_their_lines_the_standard_format(
    api: Api, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The access log makes its records from a template and formats them directly: each
    record has every field `Logger.makeRecord` gives, its line is what the standard
    `logging.Formatter` writes for it, and a secret in the path is redacted."""
    configure_logging("INFO")
    records: list[logging.LogRecord] = []
    keep = logging.Handler()
    keep.emit = records.append  # type: ignore[method-assign]
    access = logging.getLogger(ACCESS_LOGGER)
    access.addHandler(keep)
    opaque = "Q" * 43
    before = time.time()
    try:
        answer = api.client.get(f"/api/nothing/{opaque}")
    finally:
        access.removeHandler(keep)
    after = time.time()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "recovery.access" in line]
    assert len(lines) == 1 and len(records) == 1
    match = ACCESS_LINE.match(lines[0])
    assert match, lines[0]
    assert opaque not in err and match[3] == "GET /api/nothing/[redacted]"
    assert match[4] == answer.headers["x-request-id"]
    (record,) = records
    made = access.makeRecord(access.name, logging.INFO, "(unknown file)", 0, "", None, None)
    assert set(vars(made)) <= set(vars(record))
    assert (record.name, record.levelno, record.levelname) == (ACCESS_LOGGER, 20, "INFO")
    assert record.request_id == match[4] and record.args is None
    assert before <= record.created <= after
    assert record.msecs == pytest.approx((record.created % 1) * 1000)
    assert record.relativeCreated == pytest.approx(
        made.relativeCreated - (made.created - record.created) * 1000, abs=1
    )
    standard = logging.Formatter(LINE_FORMAT).format(logging.makeLogRecord(vars(record)))
    assert standard == lines[0]
    assert RedactingFormatter(LINE_FORMAT).format(record) == lines[0]
