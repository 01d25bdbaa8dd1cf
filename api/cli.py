"""The `recovery` command line: serve, worker, migrate, sweep, diagrams, accounts, keys,
support agents, reset-all, demo.

Every command reads the same `RECOVERY_*` environment as the server
(`settings_from_env`), when it runs and never at import. Exit status: 0 on
success, 2 on bad usage (argparse), 1 on failure with a one-line reason on
stderr. Heavy imports happen inside the commands, so `recovery --help` and
usage errors answer at once.

`serve` applies the migrations, then runs uvicorn (through `api.server`: read
timeouts, a connection limit, the metrics listener) with the mail dispatcher
in-process; `worker` runs the dispatcher alone, for deployments with several
processes. Both stop cleanly on SIGTERM or SIGINT: the dispatcher finishes its
batch, the database threads and connections are closed, and the exit status
is 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from litestar import Litestar

    from api.services import Services
    from api.settings import Settings
    from engine import Engine

PROG = "recovery"
# How long `serve` lets open requests finish after SIGTERM before closing them.
GRACEFUL_SHUTDOWN_SECONDS = 10
# Read by `app_factory` in each uvicorn worker process: whether that process
# runs the dispatcher. `serve` sets it before uvicorn spawns the workers.
DISPATCHER_ENV = "RECOVERY_SERVE_DISPATCHER"
DEMO_TIMEOUT_SECONDS = 30.0

Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A failure the command explains in one line (exit status 1)."""


# -- parsing -------------------------------------------------------------------


def _birthdate(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date of the form YYYY-MM-DD: {value!r}") from None


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _port(value: str) -> int:
    number = _positive(value)
    if number > 65535:
        raise argparse.ArgumentTypeError("must be at most 65535")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (SPEC §7)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Account-recovery engine. Configuration comes from RECOVERY_* variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="apply migrations, then serve the API and pages (mail worker in-process)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument(
        "--workers", type=_positive, default=1, help="server processes (PostgreSQL advised)"
    )
    serve.add_argument(
        "--no-dispatcher",
        action="store_true",
        help="do not send mail from this process (run `recovery worker` instead)",
    )
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser("worker", help="run the mail dispatcher alone until stopped")
    worker.set_defaults(handler=_worker)

    migrate = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(handler=_migrate)

    sweep = commands.add_parser("sweep", help="expire overdue attempts in bulk")
    sweep.set_defaults(handler=_sweep)

    diagrams = commands.add_parser(
        "diagrams",
        help="write each flow version as .mmd and .dot (and .svg with Graphviz)",
    )
    diagrams.add_argument("--out", default="diagrams", type=Path)
    diagrams.set_defaults(handler=_diagrams)

    accounts = commands.add_parser("accounts", help="manage accounts")
    account_commands = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    create_account = account_commands.add_parser(
        "create", help="create an account; the password is read from standard input"
    )
    create_account.add_argument("--email", required=True)
    create_account.add_argument("--name", required=True)
    create_account.add_argument("--birthdate", type=_birthdate, metavar="YYYY-MM-DD")
    create_account.add_argument("--locale", choices=("en", "fr"), default="en")
    create_account.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from standard input (one line)",
    )
    create_account.set_defaults(handler=_create_account)
    import_accounts = account_commands.add_parser(
        "import",
        help="import many accounts from a JSON or NDJSON file, all or nothing",
        description=(
            'FILE holds {"accounts": [...]}, a JSON list of rows, or one row per line '
            '(NDJSON); each row {"email", "name", "locale"?, "birth_date"?, "password"? , '
            '"password_hash"?} with exactly one of password and password_hash. One bad row '
            "refuses the whole file: every bad row is listed and nothing is created."
        ),
    )
    import_accounts.add_argument("file", metavar="FILE", type=Path)
    import_accounts.set_defaults(handler=_import_accounts)

    keys = commands.add_parser("support-key", help="manage support API keys")
    key_commands = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create_key = key_commands.add_parser(
        "create", help="create a key; it is printed once, as the last line"
    )
    create_key.add_argument("--name", required=True)
    create_key.add_argument("--role", required=True, choices=("read", "write", "admin"))
    create_key.set_defaults(handler=_create_key)
    list_keys = key_commands.add_parser(
        "list", help="every key's name, role, and when it was created or revoked"
    )
    list_keys.set_defaults(handler=_list_keys)
    revoke_key = key_commands.add_parser(
        "revoke", help="revoke the live key with this name (its name may then be reused)"
    )
    revoke_key.add_argument("name", metavar="NAME")
    revoke_key.set_defaults(handler=_revoke_key)

    webhooks = commands.add_parser("webhooks", help="manage webhook endpoints")
    webhook_commands = webhooks.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_webhook = webhook_commands.add_parser(
        "add", help="register an endpoint; its signing secret is printed once, as the last line"
    )
    add_webhook.add_argument("url", metavar="URL")
    add_webhook.add_argument(
        "--events",
        required=True,
        nargs="+",
        metavar="TYPE",
        help="event types, space- or comma-separated (password.changed sessions.revoked ...)",
    )
    add_webhook.set_defaults(handler=_add_webhook)
    agents = commands.add_parser("support-agent", help="manage the support console's agents")
    agent_commands = agents.add_subparsers(dest="action", required=True, metavar="ACTION")
    create_agent = agent_commands.add_parser(
        "create",
        help="create an agent; the password is read from standard input, and the seed of "
        "the second factor (every write agent has one) is printed once",
    )
    create_agent.add_argument("--email", required=True)
    create_agent.add_argument("--name", required=True)
    create_agent.add_argument("--role", required=True, choices=("read", "write"))
    create_agent.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from standard input (one line)",
    )
    create_agent.add_argument(
        "--second-factor",
        action="store_true",
        help="give a read agent a second factor too (write agents always have one)",
    )
    create_agent.add_argument(
        "--time-zone", default="UTC", help="the zone the console shows their times in"
    )
    create_agent.set_defaults(handler=_create_agent)
    reset_all = commands.add_parser(
        "reset-all",
        help="after a breach: end every session, make every password unusable and email "
        "each account a recovery link (resumes an unfinished run)",
    )
    reset_all.add_argument(
        "--accounts",
        type=Path,
        metavar="FILE",
        help="only the accounts this file lists, one email address or account id a line",
    )
    reset_all.set_defaults(handler=_reset_all)

    attempts = commands.add_parser("attempts", help="inspect recovery attempts")
    attempt_commands = attempts.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = attempt_commands.add_parser(
        "show", help="an attempt's state, timeline and allowed events"
    )
    show.add_argument(
        "id", metavar="ID", help="the attempt's id, or the reference a person reads out"
    )
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(handler=_show_attempt)

    demo = commands.add_parser(
        "demo", help="walk the five steps of a recovery against a running server"
    )
    demo.add_argument("--base-url", help="the server (default: RECOVERY_PUBLIC_BASE_URL)")
    demo.add_argument(
        "--mailbox", type=Path, help="the file transport's directory (default: RECOVERY_MAIL_URL)"
    )
    demo.add_argument(
        "--timeout",
        type=float,
        default=DEMO_TIMEOUT_SECONDS,
        help="seconds to wait for each step (default: %(default)s)",
    )
    demo.add_argument(
        "--code",
        action="store_true",
        help="type the email's one-time code instead of opening its link",
    )
    demo.set_defaults(handler=_demo)
    return parser


# -- running -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status (argparse exits with 2 itself on bad usage)."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        reason = _explain(exc)
        if reason is None:
            raise
        _fail(reason)


def _fail(reason: str) -> NoReturn:
    # One line, whatever the error carried: scripts read the first line.
    print(f"{PROG}: {' '.join(reason.split())}", file=sys.stderr)
    raise SystemExit(1)


def _explain(exc: Exception) -> str | None:
    """The one-line reason for an expected failure, or None for a bug (traceback)."""
    from alembic.util import CommandError as AlembicError
    from sqlalchemy.exc import SQLAlchemyError

    from api.demo import DemoFailed
    from api.errors import PolicyFailed, RecoveryError
    from api.settings import SettingsError
    from engine.errors import EngineError, InvalidAttemptId

    if isinstance(exc, CommandError | DemoFailed):
        return str(exc)
    if isinstance(exc, SettingsError):
        return f"bad configuration: {exc}"
    if isinstance(exc, PolicyFailed):
        reasons = "; ".join(f"{d['code']} ({d['message'].rstrip('.')})" for d in exc.details)
        return f"password refused: {reasons}"
    if isinstance(exc, InvalidAttemptId):
        return f"{exc.message} {exc.fields.get('value', '')!r}: expected a UUID"
    if isinstance(exc, RecoveryError | EngineError):
        return exc.message
    if isinstance(exc, SQLAlchemyError):
        return f"database error: {_database_error(exc)} (is the database reachable and migrated?)"
    if isinstance(exc, AlembicError):
        return f"migration failed: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return None


def _database_error(exc: Any) -> str:
    """What went wrong, without the statement's parameters (they can hold hashes)."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return type(exc).__name__
    # The driver's first line names the problem; later lines may quote row values.
    first = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {first[0]}" if first else type(orig).__name__


def _settings() -> Settings:
    from api.settings import settings_from_env

    return settings_from_env()


@contextlib.contextmanager
def open_engine(settings: Settings) -> Iterator[Engine]:
    """An engine on the configured database, closed when the block ends."""
    from engine import Database, Engine
    from flows import registry

    db = Database(settings.database_url, pool_size=2)
    try:
        yield Engine(db, registry(settings))
    finally:
        db.close()


@contextlib.contextmanager
def open_services(settings: Settings) -> Iterator[Services]:
    """Every service on the configured database, closed when the block ends."""
    from api.services import build_services

    services = build_services(settings)
    try:
        yield services
    finally:
        services.close()


@contextlib.contextmanager
def _signals_recorded() -> Iterator[list[int]]:
    """Keep SIGTERM and SIGINT from killing the process after uvicorn's graceful stop.

    uvicorn catches the signal, shuts down, restores the handlers it found and
    raises the signal again; with these handlers in place that second delivery
    is only recorded, so `serve` returns and exits 0.
    """
    received: list[int] = []

    def record(signum: int, _frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- serve and worker ----------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from api import migrate
    from api.logs import configure_logging
    from api.web.server import serve

    settings = _settings()
    if settings.metrics_address is not None and settings.metrics_address[1] == args.port:
        raise CommandError(f"RECOVERY_METRICS_LISTEN must use another port than --port {args.port}")
    configure_logging(settings.log_level)
    migrate.upgrade(settings.database_url)
    os.environ[DISPATCHER_ENV] = "0" if args.no_dispatcher else "1"
    target: Any
    if args.workers > 1:
        # Worker processes import the app themselves: give uvicorn a factory to call.
        target = f"{__name__}:app_factory"
        if settings.csrf_secret is None:
            # A form rendered by one worker may be posted to another: they must
            # share the CSRF secret. Without one configured, this run makes one.
            os.environ["RECOVERY_CSRF_SECRET"] = secrets.token_hex(32)
    else:
        target = _create_app(settings, run_worker=not args.no_dispatcher)
    with _signals_recorded():
        try:
            # uvicorn with read timeouts, a connection limit and the metrics socket.
            serve(
                settings,
                target,
                host=args.host,
                port=args.port,
                workers=args.workers,
                factory=args.workers > 1,
                graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            )
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise CommandError(f"the server stopped with status {exc.code}") from None
    return 0


def _create_app(settings: Settings, *, run_worker: bool) -> Litestar:
    from api.web.app import create_app

    return create_app(settings, run_worker=run_worker)


def app_factory() -> Litestar:
    """The application of one `recovery serve --workers N` process (reads the environment)."""
    from api.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level)
    return _create_app(settings, run_worker=os.environ.get(DISPATCHER_ENV, "1") == "1")


def _worker(args: argparse.Namespace) -> int:
    import asyncio

    from api import migrate
    from api.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level)
    # Serialised across processes by api.migrate, so workers and servers may start together.
    migrate.upgrade(settings.database_url)
    asyncio.run(_run_worker(settings))
    return 0


async def _run_worker(settings: Settings) -> None:
    import asyncio
    import logging

    log = logging.getLogger("recovery.worker")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with open_services(settings) as services:
        # "mail worker started" is what supervisors and tests wait for.
        log.info("mail worker started (%r)", services.mail.transport)
        await services.worker.run_forever(stop)
        log.info("mail worker stopped")


# -- database commands ----------------------------------------------------------


def _migrate(args: argparse.Namespace) -> int:
    from api import migrate

    settings = _settings()
    before = migrate.current_revision(settings.database_url)
    migrate.upgrade(settings.database_url)
    head = migrate.head_revision()
    if before == head:
        print(f"database schema already current (revision {head})")
    else:
        print(f"database schema migrated from {before or 'empty'} to revision {head}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    settings = _settings()
    with open_engine(settings) as engine:
        moved = engine.sweep_sync()
    print(f"swept {moved} overdue attempt{'s' if moved != 1 else ''}")
    return 0


def _diagrams(args: argparse.Namespace) -> int:
    from engine.diagrams import graphviz_available, write_diagrams
    from flows import registry

    settings = _settings()
    written = write_diagrams(registry(settings), args.out)
    for path in written:
        print(path)
    if not graphviz_available():
        print("(no .svg: Graphviz's `dot` is not installed)", file=sys.stderr)
    return 0


def _read_password() -> str:
    """One line from standard input, its line ending removed."""
    text = sys.stdin.read()
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    if not text:
        raise CommandError("no password on standard input (--password-stdin)")
    if "\n" in text or "\r" in text:
        raise CommandError("standard input must hold the password on one line")
    return text


def _create_account(args: argparse.Namespace) -> int:
    settings = _settings()
    password = _read_password()
    with open_services(settings) as services:
        account = services.accounts.create_sync(
            email=args.email,
            name=args.name,
            password=password,
            birth_date=args.birthdate,
            locale=args.locale,
        )
    print(f"created account {account.id} for {_printable(account.email)}")
    return 0


def _import_accounts(args: argparse.Namespace) -> int:
    from api.admin import importing

    settings = _settings()
    rows = _rows_of_file(args.file)
    with open_services(settings) as services, _progress() as progress:
        try:
            summary = services.admin.importer.import_sync(rows, progress)
        except importing.ImportRefused as refused:
            for error in refused.errors:
                print(
                    f"row {error.row}: {error.code}: {_printable(error.as_dict('en')['message'])}"
                )
            raise CommandError(f"{refused.message}; nothing was imported") from None
    print(f"imported {args.file}: {summary.describe()}")
    return 0


def _rows_of_file(path: Path) -> list[object]:
    """The rows of a JSON file ({"accounts": [...]} or a list) or of an NDJSON file."""
    from api.admin import importing

    data = path.read_bytes()
    if data.lstrip()[:1] in (b"[", b"{") and not _looks_like_ndjson(data):
        return importing.rows_of_json(data)
    return list(importing.rows_of_ndjson_lines(data.splitlines()))


def _looks_like_ndjson(data: bytes) -> bool:
    """Whether the file is one JSON object per line rather than one JSON document."""
    lines = [line for line in data.splitlines() if line.strip()]
    if len(lines) < 2:
        return bool(lines) and b'"accounts"' not in lines[0] and lines[0].lstrip()[:1] == b"{"
    return lines[0].rstrip().endswith(b"}") and lines[1].lstrip()[:1] == b"{"


STAGES = {"check": "checking rows", "hash": "hashing passwords", "insert": "inserting"}


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on standard error (rich), one task per stage of the import; only on a
    terminal, so a script's standard error holds nothing but a failure's one line."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(STAGES.get(stage, stage), total=total)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        yield update


def _add_webhook(args: argparse.Namespace) -> int:
    settings = _settings()
    events = [e.strip() for value in args.events for e in value.split(",") if e.strip()]
    with open_services(settings) as services:
        endpoint_id, secret = services.webhooks.register_sync(args.url, events, "(command line)")
    print(f"registered webhook {endpoint_id} for {', '.join(events)} at {_printable(args.url)}.")
    print("Its signing secret is shown only this once; keep it secret. The secret:")
    print(secret)
    return 0


def _create_key(args: argparse.Namespace) -> int:
    from api.support.service import SupportService

    settings = _settings()
    with open_engine(settings) as engine:
        key = SupportService(engine).create_key_sync(args.name, args.role)
    print(f"created support key {_printable(args.name)!r} with role {args.role}.")
    print("It is shown only this once; keep it secret. The key:")
    print(key)
    return 0


def _list_keys(args: argparse.Namespace) -> int:
    from api.support.service import SupportService

    settings = _settings()
    with open_engine(settings) as engine:
        keys = SupportService(engine).list_keys_sync()
    if not keys:
        print("no support keys")
    for key in keys:
        status = f"revoked {_iso(key['revoked_at'])}" if key["revoked_at"] else "live"
        print(
            f"{_printable(key['name'])}\t{key['role']}\tcreated {_iso(key['created_at'])}\t{status}"
        )
    return 0


def _revoke_key(args: argparse.Namespace) -> int:
    from api.support.service import SupportService

    settings = _settings()
    with open_engine(settings) as engine:
        SupportService(engine).revoke_key_sync(args.name)
    print(f"revoked support key {_printable(args.name)!r}; it no longer works")
    return 0


def _create_agent(args: argparse.Namespace) -> int:
    from api.support.agents import Agents

    settings = _settings()
    password = _read_password()
    with open_services(settings) as services:
        agents = Agents(
            services.engine.db,
            services.engine.clock,
            services.hasher,
            services.policy,
            services.signin,
            settings,
        )
        created = agents.create_sync(
            email=args.email,
            name=args.name,
            role=args.role,
            password=password,
            second_factor=args.second_factor,
            time_zone=args.time_zone,
        )
    agent = created.agent
    print(f"created support agent {_printable(agent.email)} ({agent.role}), id {agent.id}")
    if created.totp_secret is not None:
        print("Second factor, shown only this once: add it to an authenticator app.")
        print(f"totp-secret: {created.totp_secret}")
        print(f"totp-uri: {created.provisioning_uri}")
    return 0


# -- reset-all -------------------------------------------------------------------


def _reset_all(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from api.reset_all import ResetRefused, read_account_list, reset_all

    settings = _settings()
    try:
        listed = read_account_list(args.accounts) if args.accounts is not None else None
    except ResetRefused as exc:
        raise CommandError(str(exc)) from None
    bar = Progress(
        "reset-all",
        BarColumn(),
        MofNCompleteColumn(),
        "accounts",
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task("reset-all", total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with open_services(settings) as services, bar:
        try:
            summary = reset_all(services, listed, progress=progress)
        except ResetRefused as exc:
            raise CommandError(str(exc)) from None
    if summary.resumed:
        print(f"resumed the unfinished run {summary.run_id}")
    print(
        f"reset {summary.reset} of {summary.total} accounts: {summary.sessions_ended} "
        f"session{'s' if summary.sessions_ended != 1 else ''} ended, "
        f"{summary.emailed} recovery email{'s' if summary.emailed != 1 else ''} queued"
        + (f" ({summary.disabled} disabled, not emailed)" if summary.disabled else "")
        + (f", {summary.not_found} listed not found" if summary.not_found else "")
    )
    return 0


# -- attempts show --------------------------------------------------------------


def _show_attempt(args: argparse.Namespace) -> int:
    from api.support.reference import reference_bounds

    settings = _settings()
    with open_services(settings) as services:
        target: str = args.id
        bounds = None if _looks_like_uuid(target) else reference_bounds(target)
        if bounds is not None:
            # A reference as a person reads it out: the attempts whose id carries it.
            found = services.engine.queries.page_sync(id_between=bounds, limit=10).items
            if not found:
                raise CommandError(f"no attempt has the reference {_printable(target)!r}")
            if len(found) > 1:
                ids = ", ".join(str(a.id) for a in found)
                raise CommandError(f"the reference {_printable(target)!r} fits several: {ids}")
            target = str(found[0].id)
        # Reading applies an overdue deadline first, as every other reader does.
        view = _plain(services.support.view_sync(target))
    if args.json:
        print(json.dumps(view, indent=2, ensure_ascii=False))
    else:
        print(_attempt_text(view))
    return 0


def _looks_like_uuid(value: str) -> bool:
    return len(value.replace("-", "")) == 32


def _plain(value: Any) -> Any:
    """Support's view as JSON-ready data: datetimes as ISO 8601 text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _printable(value: object) -> str:
    """Text from the database or the user, with control characters (CR, LF...) escaped."""
    text = str(value)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _attempt_text(view: Mapping[str, Any]) -> str:
    delivery = view["delivery"]
    lines = [
        f"attempt    {view['id']}  (reference {view['reference']})",
        f"flow       {view['flow']} (version {view['flow_version']})",
        f"state      {view['state']}",
        f"route      {_printable(view['route'] or '-')}",
        f"email      {_printable(view['email_masked'] or '-')}",
        f"locale     {_printable(view['locale'])}",
        f"created    {view['created_at']}",
        f"updated    {view['updated_at']}",
        f"deadline   {view['deadline_at'] or '-'}",
        f"delivery   {delivery['status']}, tries {delivery['tries']}"
        + (f", sent {delivery['sent_at']}" if delivery["sent_at"] else "")
        + (f", last error: {_printable(delivery['last_error'])}" if delivery["last_error"] else ""),
        f"client     {_printable(view['client_ip'] or '-')}"
        + (f"  ({_printable(view['user_agent'])})" if view["user_agent"] else ""),
        "timeline",
    ]
    for entry in view["timeline"]:
        if entry["accepted"]:
            move = f"{entry['from'] or '(new)'} -> {entry['to']}"
        else:
            move = f"refused in {entry['from']}"
        detail = json.dumps(entry["detail"], ensure_ascii=False, sort_keys=True)
        row = (
            f"  {entry['seq']:>3}  {entry['at']}  {entry['event']:<12} {move:<34} "
            f"{_printable(entry['actor']):<16} {_printable(detail) if entry['detail'] else ''}"
        )
        lines.append(row.rstrip())
    allowed = view["allowed_events"]
    lines.append(f"allowed    {', '.join(allowed) if allowed else '(none: final state)'}")
    return "\n".join(lines)


# -- demo ------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from api.demo import run_demo

    settings = _settings()
    base_url = (args.base_url or settings.public_base_url).rstrip("/")
    mailbox = args.mailbox or settings.mail_dir
    if mailbox is None:
        raise CommandError(
            "the demo reads the email from the file transport: pass --mailbox DIR, or run "
            "the server and the demo with RECOVERY_MAIL_URL=file://DIR"
        )
    if args.timeout <= 0:
        raise CommandError("--timeout must be positive")
    run_demo(
        settings, base_url=base_url, mailbox=Path(mailbox), timeout=args.timeout, code=args.code
    )
    return 0


if __name__ == "__main__":
    # Run through the importable module, not this `__main__` copy of it, so the
    # classes other modules import from `api.cli` (CommandError) are the same.
    from api.cli import main as _main

    sys.exit(_main())
