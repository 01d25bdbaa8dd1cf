"""Link tokens: 256 bits from `secrets`, stored only as a digest, compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import pytest

from api.accounts import tokens


def test_a_token_carries_256_bits_drawn_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    real = secrets.token_bytes

    def recording(n: int | None = None) -> bytes:
        drawn.append(n or 0)
        return real(n)

    monkeypatch.setattr(secrets, "token_bytes", recording)
    token = tokens.new_token()
    assert drawn == [32]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert len(raw) * 8 == 256
    assert len({tokens.new_token() for _ in range(1000)}) == 1000


def test_only_the_sha256_digest_is_kept() -> None:
    token = tokens.new_token()
    digest = tokens.token_hash(token)
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert token not in digest


def test_tokens_are_compared_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def recording(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    token = tokens.new_token()
    assert tokens.token_matches(token, tokens.token_hash(token))
    assert not tokens.token_matches(token, tokens.token_hash(token + "x"))
    assert len(calls) == 2


@pytest.mark.parametrize(
    "value", [None, 42, ["x" * 43], "short", "x" * 200, "has space" * 5, "é" * 43]
)
def test_anything_not_shaped_like_a_token_is_refused_before_any_lookup(value: object) -> None:
    assert not tokens.plausible_token(value)


def test_a_real_token_is_plausible() -> None:
    assert tokens.plausible_token(tokens.new_token())
