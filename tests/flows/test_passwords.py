"""Tests of Argon2 password hashing: parameters, Unicode, failure modes, concurrency."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import unicodedata

import argon2
import pytest
from argon2 import extract_parameters, profiles

from api.accounts.passwords import (
    UNUSABLE_PASSWORD,
    Argon2Hasher,
    PasswordHasher,
    is_usable,
    normalise_password,
)

CHEAP = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


@pytest.fixture
def hasher() -> Argon2Hasher:
    return Argon2Hasher.for_tests()


@pytest.fixture(scope="module")
def production() -> Argon2Hasher:
    # One production hasher for the module: building it costs one real hash (the dummy).
    return Argon2Hasher()


def test_argon2_hasher_implements_the_protocol(hasher: Argon2Hasher) -> None:
    """Argon2Hasher satisfies the PasswordHasher protocol the service codes against."""
    assert isinstance(hasher, PasswordHasher)


def test_production_parameters_are_argon2_cffi_defaults(production: Argon2Hasher) -> None:
    """The production hasher uses argon2-cffi's PasswordHasher() defaults (RFC 9106 low memory)."""
    defaults = argon2.PasswordHasher()
    params = production.parameters
    assert params == profiles.RFC_9106_LOW_MEMORY
    assert (params.time_cost, params.memory_cost, params.parallelism) == (
        defaults.time_cost,
        defaults.memory_cost,
        defaults.parallelism,
    )
    assert (params.hash_len, params.salt_len, params.type) == (
        defaults.hash_len,
        defaults.salt_len,
        argon2.Type.ID,
    )


async def test_production_hashes_carry_the_default_parameters(production: Argon2Hasher) -> None:
    """A hash made by the production hasher is Argon2id with the default parameters."""
    stored = await production.hash("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert extract_parameters(stored) == profiles.RFC_9106_LOW_MEMORY
    assert await production.verify(stored, "correct horse battery staple")


def test_the_cheap_profile_is_only_reachable_through_for_tests() -> None:
    """The production constructor takes nothing that could weaken Argon2; for_tests is cheap."""
    assert list(inspect.signature(Argon2Hasher).parameters) == ["max_concurrent"]
    cheap = Argon2Hasher.for_tests().parameters
    assert (cheap.time_cost, cheap.memory_cost, cheap.parallelism) == (1, 8, 1)


def test_a_cheap_profile_hash_needs_rehash_under_the_production_hasher(
    production: Argon2Hasher, hasher: Argon2Hasher
) -> None:
    """needs_rehash is True for a cheap-profile hash and False for a production one."""
    cheap_hash = hasher.hash_sync("a password of some kind")
    assert production.needs_rehash(cheap_hash)
    assert not hasher.needs_rehash(cheap_hash)
    assert not production.needs_rehash(production._dummy_hash)


def test_needs_rehash_is_true_for_an_unreadable_hash(hasher: Argon2Hasher) -> None:
    """A stored value that is not an Argon2 hash is reported as needing a new hash."""
    assert hasher.needs_rehash("not a hash")


async def test_the_right_password_verifies_and_a_wrong_one_does_not(hasher: Argon2Hasher) -> None:
    """verify is True for the hashed password and False for any other."""
    stored = await hasher.hash("Tr0ub4dor&3-plugh")
    assert await hasher.verify(stored, "Tr0ub4dor&3-plugh")
    assert not await hasher.verify(stored, "Tr0ub4dor&3-plugH")
    assert not await hasher.verify(stored, "")


async def test_hashes_are_salted(hasher: Argon2Hasher) -> None:
    """Hashing the same password twice gives two different hashes."""
    assert await hasher.hash("same password") != await hasher.hash("same password")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "garbage",
        "$argon2id$v=19$m=8,t=1,p=1$xx$yy",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ",  # truncated
    ],
)
async def test_verify_returns_false_for_a_malformed_hash(hasher: Argon2Hasher, stored: str) -> None:
    """A malformed or foreign stored hash makes verify answer False, never raise."""
    assert await hasher.verify(stored, "anything") is False
    assert hasher.verify_sync(stored, "anything") is False


async def test_nfc_and_nfd_forms_of_a_password_verify_against_one_hash(
    hasher: Argon2Hasher,
) -> None:
    """A password typed composed (NFC) verifies against a hash of its decomposed (NFD) form."""
    nfc = unicodedata.normalize("NFC", "Crème brûlée à Noël 2024!")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    stored = await hasher.hash(nfd)
    assert await hasher.verify(stored, nfc)
    assert await hasher.verify(await hasher.hash(nfc), nfd)


async def test_fullwidth_characters_verify_as_their_nfkc_form(hasher: Argon2Hasher) -> None:
    """Full-width letters and digits are hashed as their NFKC (ASCII) forms."""
    assert normalise_password("Ｐａｓｓ１２３") == "Pass123"
    stored = await hasher.hash("Ｐａｓｓ１２３")
    assert await hasher.verify(stored, "Pass123")


async def test_a_lone_surrogate_neither_breaks_hashing_nor_verification(
    hasher: Argon2Hasher,
) -> None:
    """A password with a lone surrogate (possible in JSON) hashes and verifies without raising."""
    odd = "pass\ud800word"
    stored = await hasher.hash(odd)
    assert await hasher.verify(stored, odd)
    assert not await hasher.verify(stored, "password")


async def test_sync_and_async_hashes_are_interchangeable(hasher: Argon2Hasher) -> None:
    """A hash made by hash_sync verifies with verify, and the other way round."""
    assert await hasher.verify(hasher.hash_sync("one two three"), "one two three")
    assert hasher.verify_sync(await hasher.hash("four five six"), "four five six")


def test_max_concurrent_must_be_positive() -> None:
    """A hasher allowing no hash at all is refused at construction."""
    with pytest.raises(ValueError, match="max_concurrent"):
        Argon2Hasher.for_tests(max_concurrent=0)


class _Observed(Argon2Hasher):
    """Counts the verifications and hashes that really run, and how many overlap."""

    hold_seconds = 0.0

    def _setup(self, ph: argon2.PasswordHasher, max_concurrent: int) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.verified: list[str] = []
        super()._setup(ph, max_concurrent)

    def _enter(self) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)

    def _leave(self) -> None:
        with self._lock:
            self.running -= 1

    def _hash_blocking(self, secret: bytes) -> str:
        self._enter()
        try:
            # Hold the slot a little so overlapping calls are visible.
            time.sleep(self.hold_seconds)
            return super()._hash_blocking(secret)
        finally:
            self._leave()

    def _verify_blocking(self, stored_hash: str, secret: bytes) -> bool:
        self._enter()
        try:
            self.verified.append(stored_hash)
            return super()._verify_blocking(stored_hash, secret)
        finally:
            self._leave()


async def test_verify_dummy_runs_one_real_verification_against_a_fixed_hash() -> None:
    """verify_dummy runs exactly one Argon2 verification, always against the same dummy hash."""
    observed = _Observed.for_tests()
    await observed.verify_dummy("whatever was typed")
    await observed.verify_dummy("something else")
    assert len(observed.verified) == 2
    assert observed.verified[0] == observed.verified[1]
    assert extract_parameters(observed.verified[0]) == observed.parameters


async def test_a_production_dummy_verification_runs_argon2_with_production_parameters() -> None:
    """The production hasher's dummy verification runs Argon2 itself, against a hash made with
    the production parameters, so it costs what a real verification costs (the times are
    compared in bench/: `dummy_verify_vs_real_ratio`)."""
    observed = _Observed()
    await observed.verify_dummy("a wrong password")
    [dummy_hash] = observed.verified
    assert extract_parameters(dummy_hash) == profiles.RFC_9106_LOW_MEMORY
    assert extract_parameters(dummy_hash) == observed.parameters


@pytest.mark.parametrize("bound", [1, 2, 3])
async def test_at_most_max_concurrent_hashes_run_at_once(bound: int) -> None:
    """However many hashes are asked for at once, no more than max_concurrent run together."""
    observed = _Observed.for_tests(max_concurrent=bound)
    observed.hold_seconds = 0.02
    results = await asyncio.gather(*(observed.hash(f"password {i}") for i in range(8)))
    assert len(set(results)) == 8
    assert observed.peak == bound


async def test_hashing_runs_on_the_hashers_own_threads_never_the_event_loops() -> None:
    """Every hash and verification runs on one of the hasher's worker threads, so the event loop
    keeps serving meanwhile (its latency while hashing is measured in bench/:
    `loop_p99_ms_while_hashing`)."""
    threads: set[str] = set()

    class _Where(Argon2Hasher):
        def _hash_blocking(self, secret: bytes) -> str:
            threads.add(threading.current_thread().name)
            return super()._hash_blocking(secret)

        def _verify_blocking(self, stored_hash: str, secret: bytes) -> bool:
            threads.add(threading.current_thread().name)
            return super()._verify_blocking(stored_hash, secret)

    hasher = _Where.for_tests(max_concurrent=2)
    loop_thread = threading.current_thread().name
    stored, _ = await asyncio.gather(hasher.hash("first password"), hasher.hash("second"))
    await hasher.verify(stored, "first password")
    await hasher.verify_dummy("anything")
    assert threads and loop_thread not in threads
    assert all(name.startswith("argon2") for name in threads)


def test_an_unusable_password_verifies_nothing_at_the_cost_of_a_dummy_verification(
    hasher: Argon2Hasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `recovery reset-all` stores matches no password (not even its own text), and
    checking it still runs one Argon2 verification, as an unknown address does."""
    assert not is_usable(UNUSABLE_PASSWORD) and is_usable(hasher.hash_sync("x"))
    verified: list[str] = []
    real = hasher._verify_blocking

    def counted(stored_hash: str, secret: bytes) -> bool:
        verified.append(stored_hash)
        return real(stored_hash, secret)

    monkeypatch.setattr(hasher, "_verify_blocking", counted)
    for guess in ("", UNUSABLE_PASSWORD, "!", "Correct-Horse-Battery-42"):
        assert hasher.verify_sync(UNUSABLE_PASSWORD, guess) is False
        assert asyncio.run(hasher.verify(UNUSABLE_PASSWORD, guess)) is False
    assert len(verified) == 8 and UNUSABLE_PASSWORD not in verified
