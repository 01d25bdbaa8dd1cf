"""Languages of the service: picking one for a request, and translating English text into it.

The message ids are the English texts themselves, so English needs no catalog.
French lives in gettext catalogs, `locale/fr/LC_MESSAGES/*.po`: several owners
keep one `.po` file each (policy, mail, pages), and every `.po` file of a
language is read and merged into one catalog. The `.po` files are read at run
time with Babel, so a fresh `pip install -e .` works without a compile step.
Fuzzy entries are left out, as gettext's own tools do.
"""

from __future__ import annotations

import functools
import io
import logging
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

__all__ = [
    "DEFAULT",
    "LOCALE_DIR",
    "SUPPORTED",
    "gettext",
    "load_translations",
    "ngettext",
    "pick_locale",
    "render",
    "translations",
]

SUPPORTED: tuple[str, ...] = ("en", "fr")
DEFAULT = "en"
LOCALE_DIR = Path(__file__).parent / "locale"

# An Accept-Language header is attacker-controlled: look at a bounded prefix and
# a bounded number of entries so parsing stays cheap whatever is sent.
_MAX_HEADER_CHARS = 1024
_MAX_ENTRIES = 32

log = logging.getLogger(__name__)


def _primary(tag: str) -> str:
    """The primary language subtag of `fr-CA`, `fr_FR` or `FR`, lower-cased."""
    return tag.strip().replace("_", "-").split("-", 1)[0].lower()


def _quality(params: list[str]) -> float | None:
    """The q-value among an entry's parameters; 1.0 when absent, None when malformed."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "q":
            continue
        try:
            q = float(value.strip())
        except ValueError:
            return None
        # RFC 9110 allows 0 to 1; anything else (including nan) is malformed.
        return q if 0.0 <= q <= 1.0 else None
    return 1.0


def known_locale(value: object) -> str:
    """A stored language if it is one we speak, else the default."""
    return value if isinstance(value, str) and value in SUPPORTED else DEFAULT


def pick_locale(accept_language: str | None, explicit: str | None = None) -> str:
    """The language to answer in: an explicit supported choice (`?lang=`) wins, then the
    best supported match from `Accept-Language` by q-value (ties keep header order),
    else English. `*` stands for the default language; `q=0` rules a language out."""
    if explicit and _primary(explicit) in SUPPORTED:
        return _primary(explicit)
    if not accept_language:
        return DEFAULT
    ranked: list[tuple[float, int, str]] = []
    entries = accept_language[:_MAX_HEADER_CHARS].split(",")[:_MAX_ENTRIES]
    for position, entry in enumerate(entries):
        tag, *params = entry.split(";")
        language = _primary(tag)
        q = _quality(params)
        if q is None or q <= 0.0:
            continue
        if language == "*":
            language = DEFAULT
        if language in SUPPORTED:
            ranked.append((-q, position, language))
    return min(ranked)[2] if ranked else DEFAULT


def _read_catalog(path: Path, locale: str) -> Translations:
    """One `.po` file as gettext translations (compiled in memory, fuzzy entries skipped)."""
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=locale)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer)


def load_translations(locale_dir: Path, locale: str) -> NullTranslations:
    """Every `*.po` file of `locale_dir/<locale>/LC_MESSAGES`, merged in file-name order
    (a msgid defined twice takes the later file's text). No files: identity translations."""
    files = sorted((locale_dir / locale / "LC_MESSAGES").glob("*.po"))
    if not files:
        return NullTranslations()
    merged = _read_catalog(files[0], locale)
    for path in files[1:]:
        merged.merge(_read_catalog(path, locale))
    log.debug("loaded %d catalog(s) for %s", len(files), locale)
    return merged


@functools.cache
def translations(locale: str) -> NullTranslations:
    """The translations of a supported language, loaded once per process; usable by
    Jinja2's `env.install_gettext_translations(...)`. English and unknown languages get
    identity translations (the message ids are English)."""
    if locale not in SUPPORTED or locale == DEFAULT:
        return NullTranslations()
    return load_translations(LOCALE_DIR, locale)


def gettext(locale: str, message: str, **params: object) -> str:
    """`message` (its English text) in `locale`, with `params` filled in by `str.format`.

    Without params the text is returned as is, so literal braces need no escaping.
    If a translation's placeholders do not fit the params (a broken catalog), the
    English text is used rather than failing the request.
    """
    return render(translations(locale).gettext(message), message, params)


def ngettext(locale: str, singular: str, plural: str, count: int, **params: object) -> str:
    """The singular or plural text (English ids) for `count` in `locale`, with `params` (and
    `count` itself) filled in by `str.format`: "1 second", "2 seconds"."""
    text = translations(locale).ngettext(singular, plural, count)
    english = singular if count == 1 else plural
    return render(text, english, {"count": count, **params})


def render(text: str, message: str, params: dict[str, object]) -> str:
    """`text` (a translation of `message`) with `params` filled in; `message` itself when
    the translation's placeholders do not fit."""
    if not params:
        return text
    try:
        return text.format(**params)
    except (KeyError, IndexError, ValueError):
        log.warning("a translation of %r does not fit its parameters", message)
        return message.format(**params)
