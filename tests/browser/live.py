"""A live `recovery serve` with its own database and mail sink, for the outside-in suites.

`LiveServer` wraps `tests.support.service` (the subprocess) with what the
browser tests and the schemathesis run both need: a fresh SQLite file, mail
going to a real loopback `SmtpSink`, limits raised so a run is never throttled
by its own traffic, and the `recovery` commands (accounts, support keys) run
against the same environment. Helpers read the reset link out of a received
email.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Mapping
from email.message import EmailMessage
from pathlib import Path

from tests.support.service import RunningService, run_recovery, start_service
from tests.support.smtp import SmtpSink

# The throttles are proven by the API and service tests; here they would only
# make a run depend on how fast it goes.
UNTHROTTLED_ENV: Mapping[str, str] = {
    "RECOVERY_PUBLIC_RATE_LIMIT_PER_MINUTE": "100000",
    "RECOVERY_EMAILS_PER_HOUR": "1000",
    "RECOVERY_RESEND_COOLDOWN_SECONDS": "0",
    "RECOVERY_LOGIN_FREE_FAILURES": "1000",
}

LINK_RE = re.compile(r"https?://[^\s\"'<>]+/recovery/reset\?token=[A-Za-z0-9_\-%.~]+")
MAIL_TIMEOUT_SECONDS = 20.0


class LiveServer:
    """A running `recovery serve` on loopback, its mail sink and its environment."""

    def __init__(self, service: RunningService, sink: SmtpSink, workdir: Path) -> None:
        self.service = service
        self.sink = sink
        self.workdir = workdir

    @property
    def base_url(self) -> str:
        return self.service.base_url

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.service.log()

    def cli(self, *args: str, stdin: str = "") -> str:
        """`recovery ARGS` against the server's database; its stdout (fails on exit != 0)."""
        result = run_recovery(*args, env=self.service.env, cwd=self.workdir, input=stdin)
        if result.returncode != 0:
            raise AssertionError(
                f"recovery {' '.join(args[:2])} exited {result.returncode}: "
                f"{result.stderr.strip()[-2000:]}"
            )
        return result.stdout

    def create_account(
        self, email: str, name: str, password: str, *, locale: str = "en", birthdate: str = ""
    ) -> None:
        """`recovery accounts create ... --password-stdin`."""
        args = ["accounts", "create", "--email", email, "--name", name, "--locale", locale]
        if birthdate:
            args += ["--birthdate", birthdate]
        self.cli(*args, "--password-stdin", stdin=password + "\n")

    def create_support_key(self, name: str, role: str) -> str:
        """`recovery support-key create`: the key is the last line of its output."""
        return self.cli("support-key", "create", "--name", name, "--role", role).split()[-1]

    def mail_to(self, address: str, count: int = 1) -> list[EmailMessage]:
        """The first `count` emails to `address`, waiting up to MAIL_TIMEOUT_SECONDS."""
        deadline = time.monotonic() + MAIL_TIMEOUT_SECONDS
        while True:
            found = self.sink.to(address)
            if len(found) >= count:
                return list(found)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} email(s) to {address}, got {len(found)}; "
                    f"server log:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)


def server_env(
    workdir: Path, sink: SmtpSink, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The `RECOVERY_*` environment of a test server (base URL added by start_service)."""
    return {
        "RECOVERY_DATABASE_URL": f"sqlite:///{workdir / 'recovery.db'}",
        "RECOVERY_MAIL_URL": sink.url,
        "RECOVERY_DISPATCH_POLL_SECONDS": "0.1",
        **UNTHROTTLED_ENV,
        **(extra or {}),
    }


@contextlib.contextmanager
def live_server(workdir: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[LiveServer]:
    """A loopback SMTP sink and a `recovery serve` mailing to it, both stopped afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    with SmtpSink() as sink:
        service = start_service(server_env(workdir, sink, extra_env), cwd=workdir)
        try:
            yield LiveServer(service, sink, workdir)
        finally:
            service.stop()


def message_text(message: EmailMessage) -> str:
    """The plain-text body of a received email."""
    part = message.get_body(preferencelist=("plain", "html"))
    assert part is not None, "the email has no text body"
    return str(part.get_content())  # type: ignore[attr-defined]


def reset_link(message: EmailMessage) -> str:
    """The reset link of a recovery email."""
    found = LINK_RE.search(message_text(message))
    assert found, f"no reset link in the email:\n{message_text(message)}"
    return found.group(0)
