"""The test kit for applications (`api.testing`): the README's example runs as written, in a
pytest of its own, and the kit's parts do what its documentation says."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from freezegun import freeze_time

from api.testing import RecoveryKit

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Testing your application with the service"


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_readme_example_passes_as_an_applications_own_test(tmp_path: Path) -> None:
    """The README's block, saved as an application's test file and run by pytest in a fresh
    process with nothing but the installed plugin, passes."""
    (tmp_path / "test_my_app.py").write_text(_readme_example(), encoding="utf-8")
    installed = any(ep.name == "recovery" for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "api.testing"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, "test_my_app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout


def test_the_kit_captures_mail_runs_the_worker_and_gives_an_admin_key(
    recovery: RecoveryKit,
) -> None:
    """Mail is kept, not sent; reading the mailbox runs the worker first; the admin key
    works on the admin API; an unknown address gets no email."""
    recovery.create_account("grace@example.com", "Grace Hopper", "Copper-Meadow-58-Quartz!")
    recovery.client.post("/api/recovery", json={"email": "nobody@example.com"})
    recovery.client.post("/api/recovery", json={"email": "Grace@Example.com"})
    assert recovery.mailbox.sent == []  # nothing until the worker runs
    [email] = recovery.mailbox.messages()
    assert email.to == "grace@example.com" and email.link.endswith(email.token)
    assert "Grace Hopper" in email.text and email.html
    assert recovery.mailbox.messages(to="nobody@example.com") == []
    assert recovery.latest_attempt("nobody@example.com").state == "unknown_account"
    listed = recovery.client.get("/api/admin/accounts", headers=recovery.admin_headers())
    assert [a["email_masked"] for a in listed.json()["items"]] == ["g***e@e***e.com"]


def test_settings_of_your_own_and_a_deadline_at_the_edge(
    make_recovery: Callable[..., RecoveryKit],
) -> None:
    """`make_recovery(link_ttl_minutes=15)`: the link lives exactly 15 minutes."""
    kit = make_recovery(link_ttl_minutes=15)
    kit.create_account("ada@example.com", "Ada Lovelace", "Copper-Meadow-58-Quartz!")
    with freeze_time("2031-05-05 12:00:00") as clock:
        kit.client.post("/api/recovery", json={"email": "ada@example.com"})
        token = kit.mailbox.last(to="ada@example.com").token
        clock.tick(15 * 60)
        assert kit.latest_attempt("ada@example.com").state == "emailed"
        opened = kit.client.post("/api/recovery/verify", json={"token": token})
        assert opened.status_code == 200
        clock.tick(1)
        assert kit.latest_attempt("ada@example.com").state == "expired"
