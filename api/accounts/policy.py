"""The password policy: which new passwords are refused, and why, in English and French.

Two profiles (SPEC §4):

- `classic` (default): 12 to 128 characters with at least one letter, one digit
  and one special character;
- `nist` (NIST SP 800-63B rev 4): 15 to 128 characters, no composition rules.

Both refuse a password that contains the account's name, email local part or
birth date, that is a common or leaked password, that zxcvbn scores below 3,
or that the confirmation does not repeat. Every violation is reported at once,
each with a stable code. The last-5 history needs the hasher, so the caller
checks it with `check_history` and adds `reused_violation()`.

Strength is reported once: a password found in the common or leaked lists is
`common_password` (a list of guesses holds it, whatever zxcvbn thinks), and
only a password in no list is scored, `too_weak` when zxcvbn finds it easy to
guess. Nearly every listed password also scores low, so reporting both told a
person the same thing twice; each code now keeps one meaning.

`checklist(locale)` lists the rules as a page shows them: one line each, with
the violation codes that break it and, for the rules a browser can check as
the person types (length, letter, digit, special character, confirmation),
what to check (`Rule.live`); the others are the server's to judge on submit.

Length is counted in Unicode code points after NFKC, as NIST SP 800-63B asks,
not in grapheme clusters: "é" counts 1 whether typed composed or decomposed
(NFKC composes it), while an emoji family or a flag counts several. Code
points are what the hasher and the database see, and what a person's 128
characters can never blow up into more than 128 of.

A password longer than the maximum is refused on its length alone: the
personal-data, common-list and zxcvbn checks are skipped, so a 1 MB input
costs a length check, not a dictionary attack on itself.
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

from zxcvbn import zxcvbn

from api.accounts.passwords import PasswordHasher, normalise_password
from api.i18n import gettext

__all__ = [
    "HISTORY_SIZE",
    "MESSAGES",
    "Field",
    "PasswordPolicy",
    "PersonalData",
    "Rule",
    "Violation",
    "check_history",
]

Field = Literal["password", "password_confirm"]
Profile = Literal["classic", "nist"]

HISTORY_SIZE = 5
MIN_ZXCVBN_SCORE = 3
# zxcvbn 4.5 raises past 72 characters (and its cost grows with length).
ZXCVBN_MAX_CHARS = 72
# Name and email parts shorter than this match too many passwords by chance.
MIN_PERSONAL_CHARS = 3
# NFKC composes at most 4 code points into one (U+1F82 is the longest canonical
# decomposition), so a raw input longer than 4 x max_length is too long after
# NFKC too, and is refused without normalising it.
_MAX_NFKC_SHRINK = 4

DATA_DIR = Path(__file__).parent / "data"
COMMON_PASSWORD_FILES = ("common-passwords.txt", "common-passwords-fr.txt")

# English texts are the gettext message ids; French lives in locale/fr/LC_MESSAGES/policy.po.
MESSAGES: dict[str, str] = {
    "too_short": "The password must be at least {min_length} characters long.",
    "too_long": "The password must be at most {max_length} characters long.",
    "missing_letter": "The password must contain at least one letter.",
    "missing_digit": "The password must contain at least one digit.",
    "missing_special": (
        "The password must contain at least one special character, such as ! ? # or a space."
    ),
    "contains_personal_data": (
        "The password must not contain your name, your email address or your date of birth."
    ),
    "common_password": (
        "This password is too common: it appears in lists of often used or leaked passwords."
    ),
    "too_weak": (
        "This password is too easy to guess. Add more words or less predictable characters."
    ),
    "reused_password": "The password must differ from your last {count} passwords.",
    "confirmation_mismatch": "The two passwords do not match.",
}

RULE_LENGTH = "Between {min_length} and {max_length} characters."
RULE_LETTER = "At least one letter."
RULE_DIGIT = "At least one digit."
RULE_SPECIAL = "At least one special character, such as ! ? # or a space."
RULE_ANY_CHARACTERS = (
    "Any characters are allowed, spaces included: "
    "a phrase of several words is easy to remember and hard to guess."
)
RULE_PERSONAL = "Not your name, your email address or your date of birth."
RULE_COMMON = "Not a common or leaked password, and not easy to guess."
RULE_HISTORY = "Not one of your last {count} passwords."
RULE_CONFIRM = "Typed twice, exactly the same."


@dataclass(frozen=True)
class Violation:
    """One broken rule: a stable `code`, the form `field` it concerns, and the numbers
    its message quotes (`params`, e.g. the minimum length)."""

    code: str
    field: Field = "password"
    params: tuple[tuple[str, int], ...] = ()

    def message(self, locale: str) -> str:
        """The explanation for a person, in `locale` ("en" or "fr"; anything else: English)."""
        return gettext(locale, MESSAGES[self.code], **dict(self.params))

    def as_dict(self, locale: str) -> dict[str, str]:
        """The shape of one entry of a 422's `error.details`."""
        return {"code": self.code, "field": self.field, "message": self.message(locale)}


@dataclass(frozen=True)
class Rule:
    """One line of the rules a page lists: its text, the violation codes that break it,
    and what a browser checks live (`length`, `letter`, `digit`, `special`, `match`),
    or None when only the server can judge it (personal data, lists, history)."""

    key: str
    text: str
    codes: tuple[str, ...]
    live: str | None = None


@dataclass(frozen=True)
class PersonalData:
    """What a password must not contain: the account's name, email and birth date."""

    name: str = ""
    email: str = ""
    birth_date: date | None = None


@dataclass(frozen=True)
class _Limits:
    min_length: int
    max_length: int
    composition: bool


_PROFILES: dict[str, _Limits] = {
    "classic": _Limits(min_length=12, max_length=128, composition=True),
    "nist": _Limits(min_length=15, max_length=128, composition=False),
}

# zxcvbn keeps the user inputs of the call in progress in a module-level dict:
# two threads checking at once would score against each other's personal data.
_ZXCVBN_LOCK = threading.Lock()
# Trailing characters that are not letters: "Password123!" is "password" in disguise.
_TRAILING_NON_LETTERS = re.compile(r"[\W\d_]+\Z")
_NAME_SEPARATORS = re.compile(r"[\W_]+")
_EMAIL_SEPARATORS = re.compile(r"[._\-+\d]+")


def _fold(text: str) -> str:
    """Case-folded, without accents: how personal data and common passwords are compared."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _is_special(char: str) -> bool:
    # Punctuation, symbols and separators (the space included) are special;
    # letters, digits, marks and invisible control characters are not.
    return unicodedata.category(char)[0] in "PSZ"


def date_forms(day: date) -> set[str]:
    """The ways a birth date is commonly typed: 1985, 14031985, 19850314, 03141985,
    1985-03-14, 14/03/1985, 14.03.1985, 03/14/1985, 850314, 140385, 14/3/85, ..."""
    year4, year2 = f"{day.year:04d}", f"{day.year % 100:02d}"
    padded = (f"{day.day:02d}", f"{day.month:02d}")
    bare = (str(day.day), str(day.month))
    forms = {year4}
    for sep in ("", "-", "/", ".", " "):
        # Without a separator only zero-padded forms are readable ("1431985" is not).
        for d, m in (padded, bare) if sep else (padded,):
            for y in (year4, year2):
                forms.update((sep.join((d, m, y)), sep.join((m, d, y)), sep.join((y, m, d))))
    return forms


def personal_fragments(personal: PersonalData) -> set[str]:
    """The folded pieces of personal data a password must not contain."""
    fragments: set[str] = set()
    name = _fold(normalise_password(personal.name))
    name_parts = [p for p in _NAME_SEPARATORS.split(name) if p]
    fragments.update(name_parts)
    fragments.add("".join(name_parts))  # "Li Na" -> "lina"
    # The local part is what precedes the last "@" (the whole value if there is none).
    local = _fold(normalise_password(personal.email)).rsplit("@", 1)[0]
    fragments.add(local)
    fragments.update(_EMAIL_SEPARATORS.split(local))
    fragments = {f for f in fragments if len(f) >= MIN_PERSONAL_CHARS}
    if personal.birth_date is not None:
        fragments.update(date_forms(personal.birth_date))
    return fragments


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped common/leaked password lists, folded (loaded once per process)."""
    words: set[str] = set()
    for name in COMMON_PASSWORD_FILES:
        for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                words.add(_fold(line.strip()))
    return frozenset(words)


def zxcvbn_score(password: str, user_inputs: Sequence[str] = ()) -> int:
    """zxcvbn's 0-4 score of the first 72 characters, safe to call from any thread."""
    if not password:
        return 0  # zxcvbn 4.5 raises IndexError on the empty string
    with _ZXCVBN_LOCK:
        return int(zxcvbn(password[:ZXCVBN_MAX_CHARS], user_inputs=list(user_inputs))["score"])


def _nfkc_within(text: str, max_length: int) -> str | None:
    """NFKC of `text`, or None when it is certainly longer than `max_length` after NFKC."""
    if len(text) > max_length * _MAX_NFKC_SHRINK:
        return None
    return normalise_password(text)


class PasswordPolicy:
    """The rules of one profile; `check` lists every rule a new password breaks."""

    def __init__(self, profile: Profile = "classic") -> None:
        if profile not in _PROFILES:
            raise ValueError(f"password policy profile must be one of {sorted(_PROFILES)}")
        limits = _PROFILES[profile]
        self.profile: str = profile
        self.min_length: int = limits.min_length
        self.max_length: int = limits.max_length
        self.composition: bool = limits.composition

    def check(self, password: str, confirmation: str, personal: PersonalData) -> list[Violation]:
        """Every violation of `password` (and of its `confirmation`), in a stable order;
        empty when the password is acceptable (bar the history, see `check_history`)."""
        normal = _nfkc_within(password, self.max_length)
        if normal is None or len(normal) > self.max_length:
            # Too long: refuse on length alone and skip the costly checks.
            violations = [self._too_long()]
            if not self._confirmed(password, normal, confirmation):
                violations.append(Violation("confirmation_mismatch", "password_confirm"))
            return violations

        violations = []
        if len(normal) < self.min_length:
            violations.append(
                Violation("too_short", "password", (("min_length", self.min_length),))
            )
        if self.composition:
            if not any(c.isalpha() for c in normal):
                violations.append(Violation("missing_letter"))
            if not any(c.isdecimal() for c in normal):
                violations.append(Violation("missing_digit"))
            if not any(_is_special(c) for c in normal):
                violations.append(Violation("missing_special"))
        folded = _fold(normal)
        fragments = personal_fragments(personal)
        if any(fragment in folded for fragment in fragments):
            violations.append(Violation("contains_personal_data"))
        # One strength verdict: a listed password is `common_password` and is not scored.
        if self._is_common(folded):
            violations.append(Violation("common_password"))
        elif zxcvbn_score(normal, self._user_inputs(personal, fragments)) < MIN_ZXCVBN_SCORE:
            violations.append(Violation("too_weak"))
        if not self._confirmed(password, normal, confirmation):
            violations.append(Violation("confirmation_mismatch", "password_confirm"))
        return violations

    def checklist(self, locale: str) -> list[Rule]:
        """The rules, one line each in `locale`, as the new-password form lists them."""
        length = gettext(
            locale, RULE_LENGTH, min_length=self.min_length, max_length=self.max_length
        )
        rules = [Rule("length", length, ("too_short", "too_long"), "length")]
        if self.composition:
            rules += [
                Rule("letter", gettext(locale, RULE_LETTER), ("missing_letter",), "letter"),
                Rule("digit", gettext(locale, RULE_DIGIT), ("missing_digit",), "digit"),
                Rule("special", gettext(locale, RULE_SPECIAL), ("missing_special",), "special"),
            ]
        else:
            rules.append(Rule("any", gettext(locale, RULE_ANY_CHARACTERS), ()))
        rules += [
            Rule("personal", gettext(locale, RULE_PERSONAL), ("contains_personal_data",)),
            Rule("common", gettext(locale, RULE_COMMON), ("common_password", "too_weak")),
            Rule(
                "history",
                gettext(locale, RULE_HISTORY, count=HISTORY_SIZE),
                ("reused_password",),
            ),
            Rule("match", gettext(locale, RULE_CONFIRM), ("confirmation_mismatch",), "match"),
        ]
        return rules

    def rules(self, locale: str) -> list[str]:
        """The rules in words, in `locale`, for the page to show before the person types."""
        return [rule.text for rule in self.checklist(locale)]

    def reused_violation(self) -> Violation:
        """The violation to add when `check_history` finds the password among the last ones."""
        return Violation("reused_password", "password", (("count", HISTORY_SIZE),))

    # -- helpers ----------------------------------------------------------------

    def _too_long(self) -> Violation:
        return Violation("too_long", "password", (("max_length", self.max_length),))

    def _confirmed(self, password: str, normal: str | None, confirmation: str) -> bool:
        if normal is None:
            # Beyond any acceptable length: plain equality says enough.
            return password == confirmation
        return normal == _nfkc_within(confirmation, self.max_length)

    @staticmethod
    def _is_common(folded: str) -> bool:
        common = common_passwords()
        stripped = _TRAILING_NON_LETTERS.sub("", folded)
        return folded in common or (bool(stripped) and stripped in common)

    @staticmethod
    def _user_inputs(personal: PersonalData, fragments: set[str]) -> list[str]:
        inputs = [personal.name, personal.email, *sorted(fragments)]
        return [normalise_password(i) for i in inputs if i]


async def check_history(hasher: PasswordHasher, password: str, history: Sequence[str]) -> bool:
    """Whether `password` matches one of the account's last `HISTORY_SIZE` hashes
    (`history` newest first, as `Account.password_history` keeps it)."""
    for stored_hash in list(history)[:HISTORY_SIZE]:
        if await hasher.verify(stored_hash, password):
            return True
    return False
