"""Everything the application runs on, built once from the settings.

`Services` is what the HTTP handlers, the command line and the worker use, and
it is the context every flow's automatic work and hooks receive: a flow names
what it needs from it (a `Protocol` of its own) and never imports this module.

Built per call (`build_services`), so each test and each server process gets
its own database pool, worker and caches; nothing lives at module level.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from datetime import timedelta

import flows
from api.accounts.accounts import Accounts
from api.accounts.passwords import Argon2Hasher, PasswordHasher
from api.accounts.policy import PasswordPolicy
from api.accounts.signin import SignIn
from api.admin.accounts import EMAIL_CHANGED_NOTICE, AdminAccounts, send_email_changed_notice
from api.admin.importing import Importer
from api.events import event_types
from api.mail.delivery import Mail, OnSend
from api.mail.transports import MailTransport, transport_from_url
from api.settings import Settings
from api.support.service import SupportService
from api.web.diagram_cache import DiagramCache
from api.webhooks.deliveries import deliver
from api.webhooks.endpoints import DELIVERY, Webhooks
from engine import Database, Engine, OutboxHandler
from engine.clock import Clock
from engine.worker import Worker

# Sends at once per worker process (each holds an SMTP connection while it runs).
MAX_CONCURRENT_SENDS = 4


@dataclass
class Services:
    """The database, the engine and the rooms around it, for one process."""

    settings: Settings
    engine: Engine
    hasher: PasswordHasher
    policy: PasswordPolicy
    accounts: Accounts
    signin: SignIn
    mail: Mail
    support: SupportService
    worker: Worker
    admin: AdminAccounts
    webhooks: Webhooks
    diagrams: DiagramCache = field(default_factory=DiagramCache)

    def close(self) -> None:
        """Stop the database threads and close the pooled connections."""
        self.engine.db.close()

    def worker_with(self, transport: MailTransport, **options: float) -> Worker:
        """A worker on this database whose mail goes to `transport` instead (a second
        dispatcher process, a bench, a test of a failing mail server)."""
        context = replace(
            self, mail=Mail(self.settings, transport, self.mail.on_send, self.mail.at_once)
        )
        return Worker(
            self.engine,
            context,
            lease=self.worker.lease,
            poll_seconds=float(options.get("poll_seconds", self.worker.poll_seconds)),
            max_concurrent=int(options.get("max_concurrent", self.worker.max_concurrent)),
            outbox=self.worker.outbox,
        )


def build_services(
    settings: Settings,
    *,
    hasher: PasswordHasher | None = None,
    clock: Clock | None = None,
    transport: MailTransport | None = None,
    max_concurrent_sends: int = MAX_CONCURRENT_SENDS,
) -> Services:
    """Every service for `settings`; the hasher, clock and mail transport may be given."""
    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    engine = Engine(db, flows.registry(settings), clock)
    return services_for(
        engine,
        settings,
        hasher=hasher,
        transport=transport,
        max_concurrent_sends=max_concurrent_sends,
    )


def services_for(
    engine: Engine,
    settings: Settings,
    *,
    hasher: PasswordHasher | None = None,
    transport: MailTransport | None = None,
    on_send: OnSend | None = None,
    max_concurrent_sends: int = MAX_CONCURRENT_SENDS,
    batch: int | None = None,
) -> Services:
    """The services around an engine that already exists (its database is shared)."""
    db = engine.db
    hasher = hasher or Argon2Hasher(settings.max_concurrent_hashes)
    policy = PasswordPolicy(settings.password_policy)
    transport = transport or transport_from_url(settings.mail_url, settings.mail_timeout_seconds)
    accounts = Accounts(db, engine.clock, hasher, policy)
    services = Services(
        settings=settings,
        engine=engine,
        hasher=hasher,
        policy=policy,
        accounts=accounts,
        signin=SignIn(db, engine.clock, hasher, settings),
        mail=Mail(settings, transport, on_send, max_concurrent_sends),
        support=SupportService(engine),
        worker=None,  # type: ignore[arg-type]  (it needs the services: set just below)
        admin=AdminAccounts(
            engine, accounts, Importer(accounts, max_rows=settings.admin_import_max_rows)
        ),
        webhooks=Webhooks(
            db,
            engine.clock,
            known_events=event_types(engine.flows),
            allow_private=settings.webhooks_allow_private,
            give_up_after=timedelta(hours=settings.webhooks_give_up_hours),
        ),
    )
    # The flows' hooks (a resend, say) run with the whole application as their context.
    services.support.context = services
    services.worker = Worker(
        engine,
        services,
        lease=timedelta(seconds=settings.dispatch_lease_seconds),
        poll_seconds=settings.dispatch_poll_seconds,
        max_concurrent=max_concurrent_sends,
        batch=batch,
        # The application's own after-commit work: webhooks, the old address's notice.
        outbox=(
            OutboxHandler(DELIVERY, deliver),
            OutboxHandler(EMAIL_CHANGED_NOTICE, send_email_changed_notice),
        ),
    )
    # Every flow that ends at a sign-in hears of each one.
    services.signin.hooks = [
        functools.partial(hook, services) for _spec, hook in engine.flows.hooked("signed_in")
    ]
    return services
