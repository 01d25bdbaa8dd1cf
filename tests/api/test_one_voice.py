"""One API, one voice: one code per kind of malformed input, every message in the request's
language, no Python names in a detail, plurals right, each content type's charset once.

The French catalogue is checked against the source: every text an error can carry (the
domain's and the engine's errors, `InvalidInput`'s messages, the error table's fixed
texts, the decoder complaints said in our words) is found by reading the code's syntax
tree, and each must have a French translation. An f-string there fails the test: its
text could never be translated.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from freezegun import freeze_time

from api.admin import importing
from api.errors import LoginSlowedDown
from api.i18n import LOCALE_DIR, ngettext
from api.web import errors as web_errors
from tests.api.conftest import Api, assert_error

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for folder in ("api", "flows", "engine") for p in (ROOT / folder).rglob("*.py")]
ERROR_BASES = {"RecoveryError", "EngineError"}
# Calls whose (positional index of the) text is an error message.
MESSAGE_ARGUMENTS = {
    "InvalidInput": (1,),
    "InvalidEmail": (0,),
    "Answer": (2,),
    "gettext": (1,),
    "RowError": (2,),
    "UrlRefused": (0,),
}
PLURAL_ARGUMENTS = {"ngettext": (1, 2)}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _error_classes(trees: list[ast.Module]) -> set[str]:
    """Every class deriving (by name, across modules) from the domain's or engine's base."""
    bases: dict[str, set[str]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {_name(b) for b in node.bases}
    found = set(ERROR_BASES)
    while True:
        more = {name for name, parents in bases.items() if parents & found} - found
        if not more:
            return found
        found |= more


def _texts(tree: ast.Module, error_classes: set[str]) -> Iterator[tuple[ast.expr, int]]:
    """Every expression in `tree` that is the text of an error message, with its line."""
    constants = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }

    def resolve(expr: ast.expr) -> ast.expr:
        if isinstance(expr, ast.Name) and expr.id in constants:
            return constants[expr.id]
        return expr

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in error_classes:
            for item in ast.walk(node):
                if isinstance(item, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "text" for t in item.targets
                ):
                    yield item.value, item.lineno
                if (
                    isinstance(item, ast.Call)
                    and isinstance(item.func, ast.Attribute)
                    and item.func.attr == "__init__"
                    and isinstance(item.func.value, ast.Call)
                    and _name(item.func.value.func) == "super"
                    and item.args
                ):
                    yield resolve(item.args[0]), item.lineno
                    for keyword in item.keywords:
                        if keyword.arg == "plural":
                            yield resolve(keyword.value), item.lineno
        if isinstance(node, ast.Call):
            name = _name(node.func)
            for index in (*MESSAGE_ARGUMENTS.get(name, ()), *PLURAL_ARGUMENTS.get(name, ())):
                if len(node.args) > index:
                    yield resolve(node.args[index]), node.lineno


def _french() -> set[str]:
    ids: set[str] = set()
    for path in sorted((LOCALE_DIR / "fr" / "LC_MESSAGES").glob("*.po")):
        with path.open("rb") as handle:
            for message in read_po(handle, locale="fr"):
                if not message.string or message.fuzzy:
                    continue
                if isinstance(message.id, tuple):
                    ids.update(message.id)
                elif message.id:
                    ids.add(message.id)
    return ids


def test_every_error_text_is_a_plain_message_id_with_a_french_translation() -> None:
    """No f-string builds an error's text, and every text has a French translation."""
    trees = {path: ast.parse(path.read_text(), str(path)) for path in SOURCES}
    error_classes = _error_classes(list(trees.values()))
    french = _french()
    texts: set[str] = set()
    formatted = []
    for path, tree in trees.items():
        for expr, line in _texts(tree, error_classes):
            where = f"{path.relative_to(ROOT)}:{line}"
            if isinstance(expr, ast.JoinedStr):
                formatted.append(where)
            elif isinstance(expr, ast.Constant) and isinstance(expr.value, str):
                texts.add(expr.value)
    assert formatted == [], "use a template with params, never an f-string"
    texts |= set(web_errors.JSON_KINDS.values()) | set(web_errors.NUMBER_BOUNDS.values())
    texts |= set(importing.HASH_MESSAGES.values())
    assert len(texts) > 60
    missing = sorted(texts - french)
    assert missing == [], "no French translation"


def test_malformed_input_of_every_kind_is_one_code(api: Api) -> None:
    """A wrong type, a missing or unknown field, bad JSON, deep JSON, a bad query parameter
    and a bad attempt id: all `invalid_input`, each detail naming its field."""
    reader = api.support_headers("read")
    json_type = {"Content-Type": "application/json"}
    answers = [
        (api.client.post("/api/recovery", json={"email": 42}), "email"),
        (api.client.post("/api/recovery", json={}), "email"),
        (api.client.post("/api/recovery", json={"email": "a@example.com", "cc": 1}), "cc"),
        (api.client.post("/api/recovery", content=b"{nope", headers=json_type), "body"),
        (api.client.post("/api/recovery", content=b"[" * 3000, headers=json_type), None),
        (api.client.post("/api/recovery", json={"email": "not an address"}), "email"),
        (api.client.get("/api/support/attempts?limit=many", headers=reader), "limit"),
        (api.client.get("/api/support/attempts?since=yesterday", headers=reader), "since"),
        (api.client.get("/api/support/attempts/not-an-id", headers=reader), "id"),
    ]
    for answer, field in answers:
        error = assert_error(answer, 400, "invalid_input")
        if field is not None:
            assert [d["field"] for d in error["details"]] == [field], error


def test_details_carry_no_python_names(api: Api) -> None:
    """A detail says `query` and `must be an integer`, never `ParamType.QUERY` or `int`."""
    reader = api.support_headers("read")
    answers = [
        api.client.get("/api/support/attempts?limit=many", headers=reader),
        api.client.get("/api/support/attempts?limit=0", headers=reader),
        api.client.post("/api/recovery", json={"email": 42}),
        api.client.post("/api/recovery", json=["a@example.com"]),
        api.client.post("/api/recovery", json={"email": "x" * 2000}),
    ]
    for answer in answers:
        error = assert_error(answer, 400, "invalid_input")
        text = answer.text
        for python in ("ParamType", "`", "Object ", "Expected"):
            assert python not in text, (python, error)
        assert not re.search(r"\b(str|int|float|bool|dict|list|NoneType)\b", text), error
    first = answers[0].json()["error"]["details"][0]
    assert (first["source"], first["message"]) == ("query", "must be an integer")


@pytest.mark.parametrize(
    ("headers", "params"), [({"Accept-Language": "fr-FR,fr;q=0.9"}, {}), ({}, {"lang": "fr"})]
)
def test_every_message_is_in_the_request_language(
    api: Api, headers: dict[str, str], params: dict[str, str]
) -> None:
    """French requests get French top-level messages and details, from the error table, the
    domain and the engine alike."""
    reader = api.support_headers("read")
    answers = {
        "framework 400": api.client.post(
            "/api/recovery", json={"email": 1}, headers=headers, params=params
        ),
        "domain 400": api.client.post(
            "/api/recovery", json={"email": "nope"}, headers=headers, params=params
        ),
        "unknown token": api.client.post(
            "/api/recovery/verify", json={"token": "t" * 43}, headers=headers, params=params
        ),
        "401": api.client.get("/api/session", headers=headers, params=params),
        "404": api.client.get("/api/nothing-here", headers=headers, params=params),
        "engine 404": api.client.get(
            "/api/support/attempts/00000000-0000-4000-8000-000000000000",
            headers={**reader, **headers},
            params=params,
        ),
    }
    expected = {
        "framework 400": ("la requête n'est pas valide", "doit être une chaîne de caractères"),
        "domain 400": (
            "l'adresse doit être de la forme nom@example.com",
            "l'adresse doit être de la forme nom@example.com",
        ),
        "unknown token": ("ce lien n'est pas valide", None),
        "401": ("vous n'êtes pas connecté", None),
        "404": ("il n'y a rien à cette adresse", None),
        "engine 404": ("la tentative 00000000-0000-4000-8000-000000000000 est introuvable", None),
    }
    for label, answer in answers.items():
        error = answer.json()["error"]
        message, detail = expected[label]
        assert error["message"] == message, (label, error)
        if detail is not None:
            assert error["details"][0]["message"] == detail, (label, error)


def test_a_wait_of_one_second_is_singular_in_both_languages() -> None:
    """ "1 second", "2 seconds"; "1 seconde", "2 secondes"."""
    assert LoginSlowedDown(1).message == "too many failed attempts; try again in 1 second"
    assert LoginSlowedDown(2).message == "too many failed attempts; try again in 2 seconds"
    assert LoginSlowedDown(1).in_language("fr") == (
        "trop d'échecs de connexion ; réessayez dans 1 seconde"
    )
    assert LoginSlowedDown(2).in_language("fr") == (
        "trop d'échecs de connexion ; réessayez dans 2 secondes"
    )
    assert ngettext("fr", "must be at least {count} character", "x {count}", 1) == (
        "doit comporter au moins 1 caractère"
    )


def test_a_slowed_down_sign_in_says_its_wait_with_the_right_plural(
    make_api: Callable[..., Api],
) -> None:
    """Over HTTP: the wait of a slowed-down sign-in is in the request's language."""
    api = make_api(login_free_failures=1)
    api.account("ada@example.com", name="Ada")
    # The clock stands still: on a loaded machine the first wait could pass between the two.
    with freeze_time("2026-12-01 09:00:00"):
        for _ in range(2):
            answer = api.client.post(
                "/api/login",
                json={"email": "ada@example.com", "password": "wrong-wrong-wrong"},
                headers={"Accept-Language": "fr"},
            )
    error = assert_error(answer, 429, "login_slowed_down")
    seconds = int(answer.headers["retry-after"])
    unit = "seconde" if seconds == 1 else "secondes"
    assert error["message"] == f"trop d'échecs de connexion ; réessayez dans {seconds} {unit}"


def test_each_content_type_carries_its_charset_once(api: Api) -> None:
    """Text answers name utf-8 once; JSON names none (RFC 8259 defines it)."""
    answers = [
        api.client.get("/api/flows/password_recovery/diagram?format=mermaid"),
        api.client.get("/api/flows/password_recovery/diagram?format=dot"),
        api.client.get("/api/flows/password_recovery/diagram?format=svg"),
        api.client.get("/api/flows"),
        api.client.get("/login"),
        api.client.get("/health"),
        api.client.get("/nothing"),
    ]
    for answer in answers:
        content_type = answer.headers["content-type"]
        assert content_type.lower().count("charset") <= 1, content_type
        if content_type.startswith("text/"):
            assert content_type.lower().count("charset=utf-8") == 1, content_type
