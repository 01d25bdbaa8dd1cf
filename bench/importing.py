"""`import_accounts_per_s_<backend>`: bringing accounts in, against plain inserts (issue 15).

Per run and backend, on fresh databases: a JSON body of `import_accounts` rows
(10,000; 300 in `--quick`) with existing hashes, a third each Argon2 PHC (other
parameters than ours), bcrypt and Django `pbkdf2_sha256$`, goes through what
`POST /api/admin/accounts/import` and `recovery accounts import` run: the body
decoded, every row checked (address normalised, name, hash form and cost, duplicates
in the batch, addresses already taken), then one transaction of chunked inserts.

- The value is accounts per second, from the body to the commit.
- The floor is the same rows, already shaped, inserted by hand in one transaction
  of the same chunked `INSERT`s on another fresh database, interleaved with the
  runs: what any import must at least pay.

No row has a plain password: each would cost one Argon2 hash (~0.1 s with the
production profile), which `hashing` measures on its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import argon2
import bcrypt
from sqlalchemy import insert

from bench.env import BACKENDS, BenchEnv
from bench.harness import Figure, Floor, median
from bench.product import Database

CHUNK = 500
ADDRESS_FORMAT = "imported%07d@example.com"


def _hashes() -> list[str]:
    """One real hash of each form (rows share them: checking a form costs the same)."""
    salt = "benchsalt"
    digest = hashlib.pbkdf2_hmac("sha256", b"Bench-Pass-1", salt.encode(), 1000)
    return [
        argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash("Bench-Pass-1"),
        bcrypt.hashpw(b"Bench-Pass-1", bcrypt.gensalt(4)).decode(),
        f"pbkdf2_sha256$1000${salt}${base64.b64encode(digest).decode()}",
    ]


def _body(count: int) -> bytes:
    hashes = _hashes()
    rows = [
        {"email": ADDRESS_FORMAT % i, "name": f"Person {i}", "password_hash": hashes[i % 3]}
        for i in range(count)
    ]
    return json.dumps({"accounts": rows}).encode()


def _import_once(url: str, body: bytes) -> float:
    from api.accounts.accounts import Accounts
    from api.accounts.passwords import Argon2Hasher
    from api.accounts.policy import PasswordPolicy
    from api.admin.importing import Importer, rows_of_json
    from engine.clock import SystemClock

    db = Database(url, pool_size=2)
    try:
        accounts = Accounts(db, SystemClock(), Argon2Hasher.for_tests(), PasswordPolicy("classic"))
        importer = Importer(accounts, max_rows=len(body))
        started = time.perf_counter()
        summary = importer.import_sync(rows_of_json(body))
        seconds = time.perf_counter() - started
        assert summary.created > 0
        return summary.created / seconds
    finally:
        db.close()


def _floor_once(url: str, body: bytes) -> float:
    from api.accounts.models import Account

    rows: list[dict[str, Any]] = json.loads(body)["accounts"]
    now = datetime.now(UTC)
    values = [
        {
            "id": uuid.uuid4(),
            "email": r["email"],
            "email_normalized": r["email"],
            "name": r["name"],
            "birth_date": None,
            "locale": "en",
            "password_hash": r["password_hash"],
            "password_history": [r["password_hash"]],
            "disabled": False,
            "created_at": now,
            "password_changed_at": now,
            "credential_version": 0,
        }
        for r in rows
    ]
    db = Database(url, pool_size=2)
    try:
        started = time.perf_counter()
        with db.transaction() as conn:
            for start in range(0, len(values), CHUNK):
                conn.execute(insert(Account.__table__), values[start : start + CHUNK])
        return len(values) / (time.perf_counter() - started)
    finally:
        db.close()


def measure(env: BenchEnv) -> list[Figure]:
    count = env.sizes.import_accounts
    body = _body(count)
    backends = BACKENDS if env.has_postgresql else ("sqlite",)
    figures = []
    for backend in backends:
        rates: list[float] = []
        floors: list[float] = []
        for run in range(env.sizes.runs):
            # Interleaved, the order swapped each run, so neither always goes first.
            pair = [
                ("import", env.fresh_url(backend, f"import_{run}")),
                ("floor", env.fresh_url(backend, f"import_floor_{run}")),
            ]
            for kind, url in pair if run % 2 == 0 else reversed(pair):
                (rates if kind == "import" else floors).append(
                    _import_once(url, body) if kind == "import" else _floor_once(url, body)
                )
        figures.append(
            Figure(
                name=f"import_accounts_per_s_{backend}",
                unit="accounts/s",
                runs=rates,
                floor=Floor(
                    f"the same {count:,} rows inserted by hand in one transaction of "
                    f"{CHUNK}-row INSERTs",
                    "accounts/s",
                    floors,
                ),
                ratio_runs=[r / f for r, f in zip(rates, floors, strict=True)],
                description=(
                    f"{count:,} accounts with Argon2, bcrypt and Django PBKDF2 hashes (a third "
                    f"each) imported on {backend}: the JSON body decoded, every row checked, "
                    "one all-or-nothing transaction; accounts per second."
                ),
                detail={"median floor accounts/s": median(floors)},
            )
        )
    return figures
