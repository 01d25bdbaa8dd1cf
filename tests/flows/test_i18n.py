"""Tests of language picking and the merged gettext catalogs."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest
from babel.messages.pofile import read_po

from api import i18n
from api.accounts import policy
from api.i18n import (
    LOCALE_DIR,
    SUPPORTED,
    gettext,
    load_translations,
    pick_locale,
    render,
    translations,
)

FR_DIR = LOCALE_DIR / "fr" / "LC_MESSAGES"
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@pytest.mark.parametrize(
    ("accept_language", "explicit", "expected"),
    [
        (None, None, "en"),
        ("", None, "en"),
        ("fr", None, "fr"),
        ("fr-CA", None, "fr"),
        ("FR_fr", None, "fr"),
        ("de, fr;q=0.5, en;q=0.4", None, "fr"),
        ("en;q=0.5, fr;q=0.8", None, "fr"),
        ("fr;q=0.8, en;q=0.8", None, "fr"),  # a tie keeps the header's order
        ("en, fr", None, "en"),
        ("fr;q=0, en;q=0.1", None, "en"),  # q=0 rules French out
        ("fr;q=0", None, "en"),
        ("de, *;q=0.5", None, "en"),  # '*' stands for the default
        ("fr;q=abc, en;q=0.2", None, "en"),  # a malformed q-value drops the entry
        ("fr;q=1.5, en;q=0.2", None, "en"),  # q above 1 is malformed too
        ("de, es", None, "en"),
        ("en", "fr", "fr"),  # ?lang= wins over the header
        ("fr", "en", "en"),
        ("fr", "de", "fr"),  # an unsupported explicit choice falls back to the header
        (None, "FR-be", "fr"),
        (None, "", "en"),
    ],
)
def test_pick_locale_honours_explicit_choice_then_q_values_then_english(
    accept_language: str | None, explicit: str | None, expected: str
) -> None:
    """pick_locale prefers a supported ?lang=, then the best Accept-Language match, then en."""
    assert pick_locale(accept_language, explicit) == expected


def test_pick_locale_reads_only_a_bounded_prefix_of_a_huge_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A megabyte of Accept-Language costs a bounded amount of work: at most 32 entries of the
    first 1,024 characters are looked at, so a language beyond them is not seen."""
    header = "de;q=0.9, " * 100_000 + "fr"
    looked_at: list[str] = []
    real_primary = i18n._primary
    monkeypatch.setattr(i18n, "_primary", lambda tag: looked_at.append(tag) or real_primary(tag))
    assert pick_locale(header) == "en"  # "fr" lies beyond the part that is read
    assert 0 < len(looked_at) <= 32
    assert sum(len(tag) for tag in looked_at) <= 1024


def test_english_is_the_message_id_and_params_are_formatted() -> None:
    """English returns the message id itself, with str.format parameters filled in."""
    assert gettext("en", "Hello {name}", name="Ada") == "Hello Ada"
    assert gettext("en", "Braces {stay} as typed") == "Braces {stay} as typed"


def test_french_comes_from_the_catalog_with_params() -> None:
    """French text comes from the catalogs, with its parameters filled in."""
    english = policy.MESSAGES["too_short"]
    assert gettext("fr", english, min_length=12) == (
        "Le mot de passe doit comporter au moins 12 caractères."
    )


def test_unknown_locale_falls_back_to_english() -> None:
    """A language the service does not speak gets English."""
    english = policy.MESSAGES["too_short"]
    assert gettext("de", english, min_length=12) == english.format(min_length=12)


def test_a_translation_whose_placeholders_do_not_fit_falls_back_to_english() -> None:
    """A broken translation shows the English text rather than failing the request."""
    assert render("Bonjour {nom}", "Hello {name}", {"name": "Ada"}) == "Hello Ada"
    assert render("Bonjour {name}", "Hello {name}", {"name": "Ada"}) == "Bonjour Ada"


def _write_po(path: Path, entries: list[tuple[str, str]], fuzzy: set[str] = frozenset()) -> None:
    lines = [
        'msgid ""',
        'msgstr ""',
        '"Language: fr\\n"',
        '"Content-Type: text/plain; charset=UTF-8\\n"',
        "",
    ]
    for msgid, msgstr in entries:
        if msgid in fuzzy:
            lines.append("#, fuzzy")
        lines += [f'msgid "{msgid}"', f'msgstr "{msgstr}"', ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def test_every_po_file_of_a_language_is_merged(tmp_path: Path) -> None:
    """All .po files of a language are read and merged; a later file wins a shared msgid."""
    folder = tmp_path / "fr" / "LC_MESSAGES"
    _write_po(folder / "a.po", [("Cat", "Chat"), ("Shared", "from a")])
    _write_po(folder / "b.po", [("Dog", "Chien"), ("Shared", "from b")])
    loaded = load_translations(tmp_path, "fr")
    assert loaded.gettext("Cat") == "Chat"
    assert loaded.gettext("Dog") == "Chien"
    assert loaded.gettext("Shared") == "from b"
    assert loaded.gettext("Bird") == "Bird"


def test_fuzzy_entries_are_not_used(tmp_path: Path) -> None:
    """A fuzzy (unchecked) translation is left out, as gettext's tools do."""
    folder = tmp_path / "fr" / "LC_MESSAGES"
    _write_po(folder / "a.po", [("Cat", "Chat"), ("Dog", "Chine")], fuzzy={"Dog"})
    loaded = load_translations(tmp_path, "fr")
    assert loaded.gettext("Cat") == "Chat"
    assert loaded.gettext("Dog") == "Dog"


def test_a_language_without_catalogs_is_the_identity(tmp_path: Path) -> None:
    """A language with no .po files translates every text to itself."""
    assert load_translations(tmp_path, "fr").gettext("Cat") == "Cat"


def test_translations_plug_into_jinja2() -> None:
    """The object from translations() is accepted by Jinja2's i18n extension and translates."""
    env = jinja2.Environment(extensions=["jinja2.ext.i18n"], autoescape=True)
    env.install_gettext_translations(translations("fr"), newstyle=True)  # type: ignore[attr-defined]
    template = env.from_string("{{ _('The two passwords do not match.') }}")
    assert template.render() == "Les deux mots de passe ne correspondent pas."


def test_only_french_has_catalogs_and_english_is_identity() -> None:
    """English needs no catalog: its translations return the text unchanged."""
    assert SUPPORTED == ("en", "fr")
    assert translations("en").gettext(policy.MESSAGES["too_weak"]) == policy.MESSAGES["too_weak"]


def _fr_catalog_entries() -> list[tuple[str, str, str]]:
    entries = []
    for path in sorted(FR_DIR.glob("*.po")):
        with path.open("rb") as handle:
            catalog = read_po(handle, locale="fr")
        for message in catalog:
            if message.id and isinstance(message.id, str) and not message.fuzzy:
                entries.append((path.name, message.id, message.string))
    return entries


def test_every_french_translation_keeps_the_placeholders_of_its_english_text() -> None:
    """Across every .po file, a translation uses exactly the {placeholders} of its msgid."""
    entries = _fr_catalog_entries()
    assert entries, "no French catalog entries found"
    for file_name, msgid, msgstr in entries:
        assert msgstr, f"{file_name}: {msgid!r} has no translation"
        assert set(PLACEHOLDER.findall(msgstr)) == set(PLACEHOLDER.findall(msgid)), (
            f"{file_name}: placeholders differ for {msgid!r}"
        )


def _policy_texts() -> set[str]:
    rules = {value for name, value in vars(policy).items() if name.startswith("RULE_")}
    return set(policy.MESSAGES.values()) | rules


def test_every_policy_text_has_a_french_translation_in_policy_po() -> None:
    """Each violation message and rule description is translated in policy.po."""
    policy_ids = {msgid for name, msgid, _ in _fr_catalog_entries() if name == "policy.po"}
    assert _policy_texts() <= policy_ids


def test_policy_po_holds_no_stale_entries() -> None:
    """Every msgid of policy.po is a text the policy module still uses."""
    policy_ids = {msgid for name, msgid, _ in _fr_catalog_entries() if name == "policy.po"}
    assert policy_ids <= _policy_texts()
