"""A client generated from the served OpenAPI document walks the whole recovery journey.

`openapi-python-client` (an outside generator) writes a Python client from a live
`recovery serve`'s /schema/openapi.json; the test imports it and, through it alone,
creates an account with the admin API, asks for a link, reads the email that arrived
at a loopback SMTP server, opens the link, sets a new password, signs in, reads who
signed in, and finds the attempt `logged_in` through the support API. On SQLite and
PostgreSQL (the server migrates a fresh database of each).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.browser.live import LiveServer, live_server, reset_link

pytestmark = pytest.mark.slow

PACKAGE = "recovery_api_client"
OLD = "Quartz!Lantern-7401-Mosaic"
NEW = "Harbour-Violet-2093-Sonnet!"
GENERATE_TIMEOUT_S = 300


@pytest.fixture
def served(empty_db_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path / "server", {"RECOVERY_DATABASE_URL": empty_db_url}) as running:
        yield running


def _generate(server: LiveServer, folder: Path) -> None:
    document = httpx.get(f"{server.base_url}/schema/openapi.json", timeout=30).text
    (folder / "openapi.json").write_text(document)
    venv_bin = str(Path(sys.executable).parent)
    done = subprocess.run(
        [
            str(Path(venv_bin) / "openapi-python-client"),
            "generate",
            "--path",
            str(folder / "openapi.json"),
            "--meta",
            "none",
            "--output-path",
            str(folder / PACKAGE),
        ],
        cwd=folder,
        env={**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=GENERATE_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The one warning allowed: the import's NDJSON body, which the generator cannot type.
    said = (done.stdout + done.stderr).splitlines()
    warnings = [line for line in said if line.startswith(("WARNING", "Unable"))]
    assert warnings == ["WARNING parsing POST /api/admin/accounts/import within admin."], said


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


def _ok(response: Any, status: int) -> Any:
    assert int(response.status_code) == status, (response.status_code, response.content[:500])
    assert response.parsed is not None
    return response.parsed


def test_a_generated_client_walks_the_whole_recovery_journey(
    served: LiveServer, tmp_path: Path
) -> None:
    _generate(served, tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        _journey(served)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _journey(server: LiveServer) -> None:
    client_module = _module("client")
    models = _module("models")
    admin_key = server.create_support_key("generated-client", "admin")
    public = client_module.Client(base_url=server.base_url)
    admin = client_module.AuthenticatedClient(base_url=server.base_url, token=admin_key)
    email = "generated.client@example.test"

    create = _module("api.admin.api_admin_accounts_create_account")
    account = _ok(
        create.sync_detailed(
            client=admin,
            body=models.AccountCreate(email=email, name="Grace Client", password=OLD),
        ),
        201,
    )
    assert account.password_scheme == "argon2"

    request = _module("api.public.api_recovery_request_recovery")
    accepted = _ok(
        request.sync_detailed(client=public, body=models.RecoveryRequest(email=email)), 202
    )
    assert accepted.status == "accepted"
    [message] = server.mail_to(email)
    token = parse_qs(urlsplit(reset_link(message)).query)["token"][0]

    verify = _module("api.public.api_recovery_verify_verify_link")
    opened = _ok(verify.sync_detailed(client=public, body=models.TokenBody(token=token)), 200)
    assert str(opened.state) == "link_opened"

    set_password = _module("api.public.api_recovery_password_set_password")
    weak = set_password.sync_detailed(
        client=public,
        body=models.PasswordBody(token=token, password="short", password_confirm="short"),
    )
    assert int(weak.status_code) == 422
    assert weak.parsed.error.code == "password_policy"
    state = _ok(
        set_password.sync_detailed(
            client=public, body=models.PasswordBody(token=token, password=NEW, password_confirm=NEW)
        ),
        200,
    )
    assert str(state.state) == "password_set"

    login = _module("api.public.api_login_login")
    refused = login.sync_detailed(client=public, body=models.LoginBody(email=email, password=OLD))
    assert int(refused.status_code) == 401 and refused.parsed.error.code == "invalid_credentials"
    session = _ok(
        login.sync_detailed(client=public, body=models.LoginBody(email=email, password=NEW)), 200
    )
    assert session.account_id == account.id

    who = _module("api.public.api_session_session")
    signed_in = client_module.AuthenticatedClient(
        base_url=server.base_url, token=session.session_token
    )
    me = _ok(who.sync_detailed(client=signed_in), 200)
    assert (me.account_id, me.locale) == (account.id, "en")

    listing = _module("api.support.api_support_attempts_list_attempts")
    page = _ok(listing.sync_detailed(client=admin, email=email), 200)
    [item] = page.items
    detail = _module("api.support.api_support_attempts_attempt_id_attempt_detail")
    attempt = _ok(detail.sync_detailed(client=admin, attempt_id=item.id), 200)
    assert str(attempt.state) == "logged_in"
    assert [str(entry.to) for entry in attempt.timeline if entry.accepted] == [
        "requested",
        "emailed",
        "link_opened",
        "password_set",
        "logged_in",
    ]

    logout = _module("api.public.api_logout_logout")
    assert int(logout.sync_detailed(client=signed_in).status_code) == 204
    gone = who.sync_detailed(client=signed_in)
    assert int(gone.status_code) == 401 and gone.parsed.error.code == "invalid_session"
