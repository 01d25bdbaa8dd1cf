"""Password hashing: Argon2id through argon2-cffi, off the event loop, a bounded number at once.

`PasswordHasher` is the protocol the service codes against; `Argon2Hasher` is
the one implementation. Production uses argon2-cffi's `PasswordHasher()`
defaults (RFC 9106 low-memory profile: Argon2id, t=3, m=64 MiB, p=4). Each
hash or verification holds 64 MiB while it runs, so at most `max_concurrent`
run at once, on the hasher's own worker threads (argon2-cffi releases the GIL,
so the event loop keeps serving while they run).

The cheap profile is reachable only through `Argon2Hasher.for_tests()`: no
setting or environment variable selects it, so production cannot fall into
it by accident.

Passwords are NFKC-normalised before hashing and verifying, so the same
password typed as NFC or NFD (or with full-width characters) gives the same
bytes. They are encoded as UTF-8 with `surrogatepass`, so no string (not even
one with a lone surrogate from a JSON body) makes hashing or verification raise.

Accounts brought in from another system keep the hash they had until their first
sign-in (`imported_scheme` says which forms are taken): an Argon2 PHC string
(any variant and parameters), bcrypt (`$2b$`, and the identical `$2a$`/`$2y$`)
or Django's `pbkdf2_sha256$`. Each is verified as its own system did (bcrypt and
PBKDF2 on the password as typed, bcrypt on its first 72 bytes), and
`needs_rehash` is True for them, so a sign-in replaces them with our Argon2.
Their costs are bounded on import, so a hostile file cannot make a sign-in hang.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import threading
import unicodedata
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar, runtime_checkable

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "UNUSABLE_PASSWORD",
    "Argon2Hasher",
    "PasswordHasher",
    "imported_scheme",
    "is_usable",
    "normalise_password",
]

T = TypeVar("T")

# argon2-cffi's documented cheap profile parameters ("only for testing").
_TEST_PROFILE = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


# What an account whose password no longer works stores instead of a hash
# (`recovery reset-all`). No PHC string starts with "!" (Django marks unusable
# passwords the same way), so no password verifies against it; verifying costs
# one dummy verification, as for an unknown address, so the answer's timing does
# not tell such an account apart.
UNUSABLE_PASSWORD = "!unusable"


def is_usable(stored_hash: str) -> bool:
    """Whether `stored_hash` is a password hash at all (not `UNUSABLE_PASSWORD`)."""
    return not stored_hash.startswith("!")


def normalise_password(password: str) -> str:
    """The NFKC form of `password`: what is hashed, verified, measured and checked."""
    return unicodedata.normalize("NFKC", password)


def _secret_bytes(password: str) -> bytes:
    # surrogatepass: a lone surrogate (valid in JSON, invalid in UTF-8) must not
    # turn a login into a 500; it simply hashes to bytes no real password gives.
    return normalise_password(password).encode("utf-8", "surrogatepass")


ARGON2 = "argon2"
BCRYPT = "bcrypt"
DJANGO_PBKDF2 = "pbkdf2_sha256"
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_DJANGO = re.compile(r"pbkdf2_sha256\$(\d{1,9})\$([^$]{1,128})\$([A-Za-z0-9+/=]{43,44})")
# The most an imported hash may cost at each sign-in (a file is input like any other):
# bcrypt cost 15 is ~2 s here, 1.2 M PBKDF2 rounds (Django 6's default) ~1 s, and
# Argon2 at 256 MiB, 10 passes is ~30 times our defaults.
MAX_BCRYPT_COST = 15
MAX_PBKDF2_ITERATIONS = 2_000_000
MAX_ARGON2_MEMORY_KIB = 256 * 1024
MAX_ARGON2_TIME_COST = 10
MAX_ARGON2_PARALLELISM = 16
BCRYPT_MAX_BYTES = 72


class UnsupportedHash(ValueError):
    """A hash given on import that is not one of the accepted forms (`code` says why)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def scheme_of(stored_hash: str) -> str | None:
    """Which form a stored hash has (`argon2`, `bcrypt`, `pbkdf2_sha256`), or None."""
    if stored_hash.startswith("$argon2"):
        return ARGON2
    if _BCRYPT.fullmatch(stored_hash):
        return BCRYPT
    if stored_hash.startswith("pbkdf2_sha256$"):
        return DJANGO_PBKDF2
    return None


def imported_scheme(stored_hash: object) -> str:
    """The form of a hash brought in from another system, checked well-formed and within
    the cost bounds; `UnsupportedHash` (with a code) otherwise."""
    if not isinstance(stored_hash, str) or not stored_hash.isascii() or len(stored_hash) > 255:
        raise UnsupportedHash("unsupported_hash")
    scheme = scheme_of(stored_hash)
    if scheme == ARGON2:
        try:
            params = argon2.extract_parameters(stored_hash)
        except InvalidHashError:
            raise UnsupportedHash("unsupported_hash") from None
        if (
            params.memory_cost > MAX_ARGON2_MEMORY_KIB
            or params.time_cost > MAX_ARGON2_TIME_COST
            or params.parallelism > MAX_ARGON2_PARALLELISM
        ):
            raise UnsupportedHash("hash_too_costly")
        return scheme
    if scheme == BCRYPT:
        found = _BCRYPT.fullmatch(stored_hash)
        assert found is not None
        if not 4 <= int(found.group(1)) <= MAX_BCRYPT_COST:
            raise UnsupportedHash("hash_too_costly")
        return scheme
    found = _DJANGO.fullmatch(stored_hash)
    if found is None:
        raise UnsupportedHash("unsupported_hash")
    if not 1 <= int(found.group(1)) <= MAX_PBKDF2_ITERATIONS:
        raise UnsupportedHash("hash_too_costly")
    return DJANGO_PBKDF2


def _verify_bcrypt(stored_hash: str, password: str) -> bool:
    secret = password.encode("utf-8", "surrogatepass")[:BCRYPT_MAX_BYTES]
    try:
        return bcrypt.checkpw(secret, stored_hash.encode("ascii"))
    except ValueError:
        return False


def _verify_django(stored_hash: str, password: str) -> bool:
    found = _DJANGO.fullmatch(stored_hash)
    if found is None:
        return False
    iterations, salt, expected = int(found.group(1)), found.group(2), found.group(3)
    derived = hashlib.pbkdf2_hmac(
        "sha256", password.encode("utf-8", "surrogatepass"), salt.encode(), iterations
    )
    try:
        return hmac.compare_digest(base64.b64decode(expected), derived)
    except (binascii.Error, ValueError):
        return False


# Hashing threads yield the CPU to the event loop (Linux nice value, per thread).
HASH_THREAD_NICE = 10


def _lower_priority() -> None:
    """Run this hashing thread at nice 10 (Linux keeps nice per thread; Argon2's lane
    threads inherit it), so the event loop is not starved of CPU while hashes run:
    measured p99 of GET /health while 8 requests hash, 34-64 ms -> 15-17 ms."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICE)


@runtime_checkable
class PasswordHasher(Protocol):
    """What the service needs from a password hasher."""

    async def hash(self, password: str) -> str:
        """A new encoded hash of `password` (random salt)."""
        ...

    async def verify(self, stored_hash: str, password: str) -> bool:
        """Whether `password` matches; False on mismatch or a malformed hash, never raises."""
        ...

    async def verify_dummy(self, password: str) -> None:
        """Spend exactly one real verification, against a fixed dummy hash."""
        ...

    def needs_rehash(self, stored_hash: str) -> bool:
        """Whether `stored_hash` was made with other parameters than this hasher's."""
        ...

    def hash_sync(self, password: str) -> str:
        """`hash` on the calling thread (command line)."""
        ...

    def verify_sync(self, stored_hash: str, password: str) -> bool:
        """`verify` on the calling thread (command line)."""
        ...


class Argon2Hasher:
    """Argon2id with argon2-cffi, run on at most `max_concurrent` dedicated threads."""

    def __init__(self, max_concurrent: int = 2) -> None:
        """The production hasher: argon2-cffi `PasswordHasher()` defaults."""
        self._setup(argon2.PasswordHasher(), max_concurrent)

    @classmethod
    def for_tests(cls, max_concurrent: int = 4) -> Argon2Hasher:
        """The cheap profile (t=1, m=8 KiB, p=1): fast, worthless as protection, tests only."""
        hasher = cls.__new__(cls)
        hasher._setup(argon2.PasswordHasher(**_TEST_PROFILE), max_concurrent)
        return hasher

    def _setup(self, ph: argon2.PasswordHasher, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._ph = ph
        self.max_concurrent = max_concurrent
        # A dedicated pool bounds the memory in flight for the whole process,
        # whichever event loop asks; callers beyond the bound wait in its queue.
        self._pool = ThreadPoolExecutor(
            max_workers=max_concurrent, thread_name_prefix="argon2", initializer=_lower_priority
        )
        weakref.finalize(self, self._pool.shutdown, wait=False)
        # Made once, with this hasher's own parameters, so a dummy verification
        # costs what a real one does. The password is random and thrown away.
        self._dummy_hash = ph.hash(secrets.token_urlsafe(32))

    @property
    def parameters(self) -> argon2.Parameters:
        """The Argon2 parameters new hashes are made with."""
        return argon2.extract_parameters(self._dummy_hash)

    # -- blocking work: run on the pool; a subclass may wrap these to observe them --

    def _hash_blocking(self, secret: bytes) -> str:
        return self._ph.hash(secret)

    def _verify_blocking(self, stored_hash: str, secret: bytes) -> bool:
        try:
            return self._ph.verify(stored_hash, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            # Mismatch, a corrupt hash or another algorithm's hash: all simply "no".
            return False

    def _verify_any_blocking(self, stored_hash: str, password: str) -> bool:
        """Our Argon2 (on the NFKC form), or an imported hash as its system made it."""
        scheme = scheme_of(stored_hash)
        if scheme == BCRYPT:
            return _verify_bcrypt(stored_hash, password)
        if scheme == DJANGO_PBKDF2:
            return _verify_django(stored_hash, password)
        return self._verify_blocking(stored_hash, _secret_bytes(password))

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    # -- the protocol -----------------------------------------------------------

    async def hash(self, password: str) -> str:
        return await self._run(self._hash_blocking, _secret_bytes(password))

    async def verify(self, stored_hash: str, password: str) -> bool:
        if not is_usable(stored_hash):
            await self.verify_dummy(password)
            return False
        return await self._run(self._verify_any_blocking, stored_hash, password)

    async def verify_dummy(self, password: str) -> None:
        await self._run(self._verify_blocking, self._dummy_hash, _secret_bytes(password))

    def needs_rehash(self, stored_hash: str) -> bool:
        if scheme_of(stored_hash) != ARGON2:
            return True  # an imported bcrypt or PBKDF2 hash: replaced at the first sign-in
        try:
            return self._ph.check_needs_rehash(stored_hash)
        except InvalidHashError:
            # Not a hash we can read: replacing it is the only sensible answer.
            return True

    def hash_sync(self, password: str) -> str:
        return self._hash_blocking(_secret_bytes(password))

    def verify_sync(self, stored_hash: str, password: str) -> bool:
        if not is_usable(stored_hash):
            self._verify_blocking(self._dummy_hash, _secret_bytes(password))
            return False
        return self._verify_any_blocking(stored_hash, password)
