"""Tests of the password policy: each rule of both profiles, personal data, Unicode, size,
messages in English and French, the history check, and zxcvbn under threads."""

from __future__ import annotations

import sys
import threading
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pytest

from api.accounts import policy as policy_module
from api.accounts.passwords import Argon2Hasher
from api.accounts.policy import (
    MESSAGES,
    PasswordPolicy,
    PersonalData,
    Violation,
    check_history,
    common_passwords,
    date_forms,
    zxcvbn_score,
)

NOBODY = PersonalData()
JEAN = PersonalData(
    name="Jean-Pierre Dupont",
    email="jean.dupont85+news@example.com",
    birth_date=date(1985, 3, 14),
)
STRONG = "Xk7#qLp2!vRm9zW"  # 15 characters: passes both profiles
ALL_CODES = {
    "too_short",
    "too_long",
    "missing_letter",
    "missing_digit",
    "missing_special",
    "contains_personal_data",
    "common_password",
    "too_weak",
    "reused_password",
    "confirmation_mismatch",
}


def codes(
    profile: str, password: str, personal: PersonalData = NOBODY, confirmation: str | None = None
) -> list[str]:
    policy = PasswordPolicy(profile)  # type: ignore[arg-type]
    confirm = password if confirmation is None else confirmation
    return [v.code for v in policy.check(password, confirm, personal)]


@pytest.mark.parametrize(
    ("profile", "password", "personal", "confirmation", "expected"),
    [
        # Acceptable passwords.
        ("classic", "Xk7#qLp2!vRm", NOBODY, None, []),
        ("classic", STRONG, JEAN, None, []),
        ("nist", STRONG, JEAN, None, []),
        ("nist", "plume orage kestrel", NOBODY, None, []),
        ("classic", "Kv#9 plume orage", NOBODY, None, []),
        # Length: classic 12..128, nist 15..128.
        ("classic", "Xk7#qLp2!vR", NOBODY, None, ["too_short"]),
        ("nist", "Xk7#qLp2!vRm9z", NOBODY, None, ["too_short"]),
        ("classic", STRONG + "a" * 114, NOBODY, None, ["too_long"]),
        ("nist", STRONG + "a" * 114, NOBODY, None, ["too_long"]),
        # Composition: classic only.
        ("classic", "7391#8264!0573", NOBODY, None, ["missing_letter"]),
        ("classic", "Kestrel#Marmot!Quill", NOBODY, None, ["missing_digit"]),
        ("classic", "Kestrel7Marmot4Quill", NOBODY, None, ["missing_special"]),
        ("nist", "Kestrel#Marmot!Quill", NOBODY, None, []),
        ("nist", "Kestrel7Marmot4Quill", NOBODY, None, []),
        # Personal data, both profiles.
        ("classic", "Dupont#7xQ!kv9Lm", JEAN, None, ["contains_personal_data"]),
        ("nist", "Dupont#7xQ!kv9Lm", JEAN, None, ["contains_personal_data"]),
        ("classic", "Dupont#7xQ!kv9Lm", NOBODY, None, []),
        # zxcvbn, fed the personal data, sees through l33t spellings of it.
        ("nist", "Z0rglub14nQu3x0tl", PersonalData(name="Zorglubianquexotl"), None, ["too_weak"]),
        ("nist", "Z0rglub14nQu3x0tl", NOBODY, None, []),
        # Common passwords, also behind trailing digits and symbols (zxcvbn lets these pass).
        ("classic", "Marseille!!2024", NOBODY, None, ["common_password"]),
        ("nist", "Marseille!!2024", NOBODY, None, ["common_password"]),
        ("classic", "Motdepasse2024!", NOBODY, None, ["common_password"]),
        ("classic", "Password123!", NOBODY, None, ["common_password"]),
        # Guessable without being on the list.
        ("classic", "aaaaaaaaaaaa1!", NOBODY, None, ["too_weak"]),
        ("nist", "aaaaaaaaaaaaaaa", NOBODY, None, ["too_weak"]),
        # Confirmation.
        ("classic", STRONG, NOBODY, STRONG + " ", ["confirmation_mismatch"]),
        ("nist", STRONG, NOBODY, "", ["confirmation_mismatch"]),
        # Everything at once.
        (
            "classic",
            "abc",
            NOBODY,
            "abd",
            ["too_short", "missing_digit", "missing_special", "too_weak", "confirmation_mismatch"],
        ),
        (
            "classic",
            "",
            NOBODY,
            None,
            ["too_short", "missing_letter", "missing_digit", "missing_special", "too_weak"],
        ),
        (
            "nist",
            "dupont",
            JEAN,
            "x",
            ["too_short", "contains_personal_data", "too_weak", "confirmation_mismatch"],
        ),
        (
            "classic",
            "Soleil1985!",
            JEAN,
            None,
            ["too_short", "contains_personal_data", "common_password"],
        ),
        ("classic", "x" * 200, NOBODY, "y", ["too_long", "confirmation_mismatch"]),
    ],
)
def test_each_rule_yields_its_code_and_every_violation_is_reported(
    profile: str,
    password: str,
    personal: PersonalData,
    confirmation: str | None,
    expected: list[str],
) -> None:
    """check() reports exactly the rules a password breaks, all of them, in a stable order."""
    assert codes(profile, password, personal, confirmation) == expected


def test_profiles_have_the_spec_limits() -> None:
    """classic is 12-128 with composition rules, nist 15-128 without; classic is the default."""
    classic, nist = PasswordPolicy(), PasswordPolicy("nist")
    assert (classic.profile, classic.min_length, classic.max_length) == ("classic", 12, 128)
    assert (nist.profile, nist.min_length, nist.max_length) == ("nist", 15, 128)


def test_an_unknown_profile_is_refused() -> None:
    """A profile name other than classic or nist fails at construction with a clear message."""
    with pytest.raises(ValueError, match="classic"):
        PasswordPolicy("lenient")  # type: ignore[arg-type]


def test_violations_carry_their_field() -> None:
    """Confirmation mismatches concern password_confirm; every other rule concerns password."""
    violations = PasswordPolicy().check("abc", "abd", NOBODY)
    fields = {v.code: v.field for v in violations}
    assert fields.pop("confirmation_mismatch") == "password_confirm"
    assert set(fields.values()) == {"password"}


@pytest.mark.parametrize(
    "form",
    [
        "1985",
        "14031985",
        "19850314",
        "03141985",
        "1985-03-14",
        "14/03/1985",
        "14.03.1985",
        "14-03-1985",
        "03/14/1985",
        "850314",
        "140385",
        "031485",
        "14/03/85",
        "14.3.1985",
        "3/14/1985",
        "14 03 1985",
    ],
)
@pytest.mark.parametrize("profile", ["classic", "nist"])
def test_a_birth_date_in_any_common_format_is_personal_data(profile: str, form: str) -> None:
    """The birth date written in any usual format inside the password is refused."""
    born = PersonalData(birth_date=date(1985, 3, 14))
    password = f"Kestrel#Quill~{form}~Plume"
    assert form in date_forms(date(1985, 3, 14))
    assert "contains_personal_data" in codes(profile, password, born)
    assert "contains_personal_data" not in codes(profile, password, NOBODY)


def test_another_date_is_not_personal_data() -> None:
    """A date that is not the birth date is no reason to refuse."""
    born = PersonalData(birth_date=date(1985, 3, 14))
    assert codes("classic", "Kestrel#Quill~2017-08-30", born) == []


@pytest.mark.parametrize(
    ("personal", "fragment"),
    [
        (PersonalData(name="Jean-Pierre Dupont"), "Jean"),
        (PersonalData(name="Jean-Pierre Dupont"), "PIERRE"),
        (PersonalData(name="Jean-Pierre Dupont"), "dUpOnT"),
        (PersonalData(name="Hélène Müller"), "Helene"),  # accents ignored
        (PersonalData(name="Helene Muller"), "Hélène"),
        (PersonalData(name="Li Na"), "LiNa"),  # short parts, whole name still counts
        (PersonalData(name="Jean Dupont"), "ＤＵＰＯＮＴ"),  # full-width, NFKC first
        (PersonalData(email="jean.dupont85+news@example.com"), "jean"),
        (PersonalData(email="jean.dupont85+news@example.com"), "Dupont"),
        (PersonalData(email="jean.dupont85+news@example.com"), "NEWS"),
        (PersonalData(email="jean.dupont85+news@example.com"), "jean.dupont85+news"),
        (PersonalData(email="marie_curie-sklodowska@example.com"), "Sklodowska"),
        (PersonalData(email="marie_curie-sklodowska@example.com"), "curie"),
    ],
)
def test_names_and_email_parts_are_personal_data(personal: PersonalData, fragment: str) -> None:
    """Each name part and email local-part piece of 3+ characters is found, whatever its case."""
    password = f"Xk7#q~{fragment}~Lp2!vRm9zW"
    assert "contains_personal_data" in codes("classic", password, personal)


@pytest.mark.parametrize(
    ("personal", "fragment"),
    [
        (PersonalData(name="Li Na"), "Na"),  # parts under 3 characters are ignored
        (PersonalData(email="al.bo@example.com"), "al"),
        (PersonalData(email="jean@example.com"), "example"),  # the domain is not personal
    ],
)
def test_short_parts_and_the_email_domain_are_not_personal_data(
    personal: PersonalData, fragment: str
) -> None:
    """Fragments under 3 characters and the email's domain do not make a password personal."""
    assert codes("classic", f"Xk7#q~{fragment}~Lp2!vRm9zW", personal) == []


def test_a_confirmation_in_another_unicode_form_matches() -> None:
    """A confirmation typed as NFD matches an NFC password (both are compared after NFKC)."""
    nfc = unicodedata.normalize("NFC", "Crème brûlée 2024 à l'heure!")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert codes("classic", nfc, NOBODY, nfd) == []
    assert codes("classic", nfd, NOBODY, nfc) == []


def test_length_is_counted_after_nfkc() -> None:
    """Full-width characters count as their NFKC forms, and decomposed accents count once."""
    fullwidth = "Ｘｋ７＃ｑＬｐ２！ｖＲｍ"  # 12 characters, NFKC to 12 ASCII ones
    assert codes("classic", fullwidth) == []
    decomposed = unicodedata.normalize("NFD", "Ébène#7qLp2!")  # 12 after NFC, 14 before
    assert len(decomposed) == 14
    assert len(unicodedata.normalize("NFKC", decomposed)) == 12
    assert codes("nist", decomposed)[0] == "too_short"


def test_the_raw_length_shortcut_never_refuses_what_nfkc_would_fit() -> None:
    """Four code points that NFKC composes into one still fit: 128 composed characters pass."""
    composite = "\u1f82"  # the longest canonical decomposition in Unicode: 4 code points
    decomposed = unicodedata.normalize("NFD", composite)
    assert len(decomposed) == 4
    policy = PasswordPolicy("nist")
    at_max = decomposed * policy.max_length
    assert len(at_max) == 4 * policy.max_length
    assert "too_long" not in [v.code for v in policy.check(at_max, at_max, NOBODY)]
    over = at_max + decomposed
    assert [v.code for v in policy.check(over, over, NOBODY)] == ["too_long"]


def test_zxcvbn_sees_only_the_first_72_characters_and_never_raises() -> None:
    """Passwords past 72 characters are scored on their first 72, without zxcvbn raising."""
    assert zxcvbn_score("x" * 128) == 0
    assert zxcvbn_score("a" * 72 + "Xk7#qLp2!vRm9zW") == zxcvbn_score("a" * 72)
    assert zxcvbn_score("") == 0


def test_a_strong_hundred_character_passphrase_passes() -> None:
    """A long passphrase of ordinary words is accepted by both profiles."""
    phrase = (
        "the 7 quiet otters of Lake Wanaka juggle copper kettles "
        "humming sea shanties until dawn breaks twice"
    )
    assert len(phrase) == 100
    assert codes("classic", phrase, JEAN) == []
    assert codes("nist", phrase, JEAN) == []


@pytest.mark.parametrize("profile", ["classic", "nist"])
@pytest.mark.parametrize("unit", ["a", "é", "ｗ", "\u1f82", "😀"])
def test_a_one_megabyte_password_is_refused_on_its_length_alone(
    profile: str, unit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 MB password is refused as too_long without an exception, and without the costly
    checks: it is never normalised as a whole, scored by zxcvbn or searched for personal data."""
    huge = unit * (1_000_000 // len(unit.encode()))
    confirmation = (huge + ".")[:-1]  # equal but a distinct object, as a request would give
    policy = PasswordPolicy(profile)  # type: ignore[arg-type]
    costly: list[str] = []
    real_normalise = policy_module.normalise_password

    def normalise(text: str) -> str:
        if len(text) > policy.max_length * 4:
            costly.append("normalise")
        return real_normalise(text)

    monkeypatch.setattr(policy_module, "normalise_password", normalise)
    monkeypatch.setattr(policy_module, "zxcvbn_score", lambda *a, **k: costly.append("zxcvbn"))
    monkeypatch.setattr(
        policy_module, "personal_fragments", lambda *a, **k: costly.append("personal") or set()
    )
    violations = policy.check(huge, confirmation, JEAN)
    assert [v.code for v in violations] == ["too_long"]
    assert costly == []


def test_a_one_megabyte_password_with_another_confirmation_reports_both() -> None:
    """A 1 MB password and a different confirmation give too_long and confirmation_mismatch."""
    huge = "a" * 1_000_000
    assert codes("classic", huge, JEAN, "a") == ["too_long", "confirmation_mismatch"]


def test_the_common_password_lists_are_shipped_and_loaded() -> None:
    """The shipped lists hold the usual suspects in English and French, folded to lower case."""
    common = common_passwords()
    assert len(common) > 10_000
    for word in ("123456", "password", "qwerty", "iloveyou", "azerty", "motdepasse", "doudou"):
        assert word in common
    assert all(word == word.lower() for word in common)


@pytest.mark.parametrize("locale", ["en", "fr"])
@pytest.mark.parametrize("code", sorted(ALL_CODES))
def test_every_code_has_a_message_in_english_and_french(code: str, locale: str) -> None:
    """Each violation code has a filled-in message in both languages, French differing."""
    params = {"too_short": 12, "too_long": 128, "reused_password": 5}
    key = {"too_short": "min_length", "too_long": "max_length", "reused_password": "count"}
    violation = Violation(code, "password", ((key[code], params[code]),) if code in key else ())
    message = violation.message(locale)
    assert message and "{" not in message
    if code in params:
        assert str(params[code]) in message
    if locale == "fr":
        assert message != violation.message("en")


def test_messages_come_from_the_policy_itself_in_both_languages() -> None:
    """The violations check() returns render their numbers in English and French."""
    (violation,) = PasswordPolicy("nist").check("Xk7#qLp2!vRm9z", "Xk7#qLp2!vRm9z", NOBODY)
    assert violation.message("en") == "The password must be at least 15 characters long."
    assert violation.message("fr") == "Le mot de passe doit comporter au moins 15 caractères."


def test_an_unknown_locale_gets_english_messages() -> None:
    """A locale the service does not speak gets the English message."""
    violation = Violation("confirmation_mismatch", "password_confirm")
    assert violation.message("de") == violation.message("en") == MESSAGES["confirmation_mismatch"]


def test_as_dict_has_the_api_shape() -> None:
    """as_dict gives the code, field and localised message of the 422 details."""
    violation = PasswordPolicy().reused_violation()
    assert violation.as_dict("fr") == {
        "code": "reused_password",
        "field": "password",
        "message": "Le mot de passe doit être différent de vos 5 derniers mots de passe.",
    }
    assert set(violation.as_dict("en")) == {"code", "field", "message"}


@pytest.mark.parametrize("profile", ["classic", "nist"])
def test_rules_are_described_in_english_and_french(profile: str) -> None:
    """rules() describes the profile's rules in words, in both languages."""
    policy = PasswordPolicy(profile)  # type: ignore[arg-type]
    english, french = policy.rules("en"), policy.rules("fr")
    assert len(english) == len(french) >= 5
    assert f"Between {policy.min_length} and 128 characters." == english[0]
    assert f"Entre {policy.min_length} et 128 caractères." == french[0]
    assert all(e != f for e, f in zip(english, french, strict=True))
    assert ("special character" in " ".join(english)) == (profile == "classic")


@pytest.fixture(scope="module")
def history_hasher() -> Argon2Hasher:
    return Argon2Hasher.for_tests()


async def test_history_finds_any_of_the_last_five_passwords(
    history_hasher: Argon2Hasher,
) -> None:
    """check_history is True for each of the newest five hashes and False beyond them."""
    passwords = [f"Old password number {i}!" for i in range(6)]  # newest first
    history = [await history_hasher.hash(p) for p in passwords]
    for recent in passwords[:5]:
        assert await check_history(history_hasher, recent, history)
    assert not await check_history(history_hasher, passwords[5], history)
    assert not await check_history(history_hasher, "A brand new one 42!", history)


async def test_history_matches_another_unicode_form(history_hasher: Argon2Hasher) -> None:
    """A previous password typed in another Unicode form is still recognised as reused."""
    nfc = unicodedata.normalize("NFC", "Crème brûlée 2024!")
    history = [await history_hasher.hash(nfc)]
    assert await check_history(history_hasher, unicodedata.normalize("NFD", nfc), history)


async def test_history_tolerates_empty_and_malformed_entries(
    history_hasher: Argon2Hasher,
) -> None:
    """An empty history or a corrupt entry is simply no match."""
    assert not await check_history(history_hasher, "anything at all", [])
    good = await history_hasher.hash("the real one 1!")
    assert await check_history(history_hasher, "the real one 1!", ["garbage", good])


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    # Switch threads every 10 µs so any unguarded shared state would show.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(previous)


@pytest.mark.usefixtures("fast_thread_switching")
def test_zxcvbn_gives_each_thread_its_own_answer_under_contention() -> None:
    """Many threads scoring at once each get the score of their own user inputs."""
    secret = "xq7zkvlbmwtrpj"
    assert zxcvbn_score(secret, [secret]) == 0
    assert zxcvbn_score(secret, ["unrelated"]) == 4
    start = threading.Barrier(8)

    def score(worker: int) -> list[int]:
        start.wait()
        inputs = [secret] if worker % 2 else ["unrelated"]
        return [zxcvbn_score(secret, inputs) for _ in range(15)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(score, range(8)))
    for worker, scores in enumerate(results):
        assert set(scores) == ({0} if worker % 2 else {4})


@pytest.mark.usefixtures("fast_thread_switching")
def test_policy_checks_from_many_threads_match_sequential_checks() -> None:
    """check() from many threads at once gives the same violations as one at a time."""
    policy = PasswordPolicy("nist")
    # zxcvbn sees through the l33t spelling of the first person's name; the second
    # person's data has nothing to do with the password.
    people = [PersonalData(name="Zorglubianquexotl"), PersonalData(name="Ada Lovelace")]
    password = "Z0rglub14nQu3x0tl"
    expected = [policy.check(password, password, p) for p in people]
    assert [[v.code for v in e] for e in expected] == [["too_weak"], []]
    start = threading.Barrier(8)

    def check(worker: int) -> list[list[Violation]]:
        start.wait()
        return [policy.check(password, password, people[worker % 2]) for _ in range(5)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(check, range(8)))
    for worker, runs in enumerate(results):
        assert all(run == expected[worker % 2] for run in runs)


def test_the_strength_threshold_is_exactly_zxcvbn_score_three() -> None:
    """A score-2 password that breaks no other rule is refused as too weak; a score-3 one passes."""
    policy = PasswordPolicy("classic")
    nobody = PersonalData()
    assert zxcvbn_score("Jennifer1990!") == 2
    assert [v.code for v in policy.check("Jennifer1990!", "Jennifer1990!", nobody)] == ["too_weak"]
    assert zxcvbn_score("Summer2024!!x") == 3
    assert policy.check("Summer2024!!x", "Summer2024!!x", nobody) == []
