"""The JSON API of support-handled recovery ("I can't access this email"), for the person.

- `POST /api/assisted-recovery`: the request (202, the same answer always);
- `POST /api/assisted-recovery/confirm`: the code sent to the contact address (200, or
  the same 400 for a wrong code whether or not the account exists);
- `POST /api/assisted-recovery/answer`: the answer to support's question (the token of
  the emailed link);
- `POST /api/assisted-recovery/cancel`: "this wasn't me" (the token of a notice's link).

Support decides through the generic `POST /api/support/attempts/{id}/events/{event}`;
the grant link is a recovery link (`/api/recovery/verify`, `/api/recovery/password`).
Handlers stay thin, as in `api.web.public`: a strict body, the flow does the work.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Router, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body
from msgspec import Meta, Struct

from api.services import Services
from api.web.errors import CONSUMES_TOKEN, documented
from api.web.public import Lang, request_locale
from api.web.ratelimit import client_ip, parse_networks
from api.web.schemas import Accepted, EmailField, StateAnswer, TokenBody, TokenField
from flows import assisted_recovery

PATH = "/api/assisted-recovery"


class _Body(Struct, forbid_unknown_fields=True, frozen=True):
    """A request body: unknown fields are refused."""


class AssistedRequest(_Body):
    """ "I can't access this email": the account, a new contact address, and details."""

    email: Annotated[str, Meta(max_length=1024, description="the address of the account")]
    contact_email: Annotated[
        str,
        Meta(max_length=1024, description="a new address to be reached at (it gets a code)"),
    ]
    name: Annotated[str, Meta(max_length=1024, description="the name on the account")]
    statement: Annotated[
        str,
        Meta(
            max_length=20_000,
            description=(
                f"what happened, in the person's words (at most "
                f"{assisted_recovery.MAX_STATEMENT_CHARS} characters)"
            ),
        ),
    ]
    birth_date: Annotated[str, Meta(max_length=64, description="optional, YYYY-MM-DD")] | None = (
        None
    )
    account_created: (
        Annotated[
            str,
            Meta(
                max_length=64,
                description="optional: roughly when the account was created, YYYY or YYYY-MM",
            ),
        ]
        | None
    ) = None


class ConfirmBody(_Body):
    contact_email: EmailField
    code: Annotated[str, Meta(max_length=64, description="the code emailed to the contact address")]


class AnswerBody(_Body):
    token: TokenField
    answer: Annotated[
        str,
        Meta(
            max_length=20_000,
            description=f"at most {assisted_recovery.MAX_ANSWER_CHARS} characters",
        ),
    ]


class Confirmed(Struct, frozen=True):
    status: Annotated[str, Meta(examples=["confirmed"])] = "confirmed"


class Answered(Struct, frozen=True):
    status: Annotated[str, Meta(examples=["answered"])] = "answered"


REQUEST_EXAMPLE = Example(
    summary="a person whose old work address is gone",
    value={
        "email": "jane.doe@oldcompany.example",
        "contact_email": "jane.doe@mail.example",
        "name": "Jane Doe",
        "statement": "I left the company and its mailbox was closed. I still sign in on my phone.",
        "birth_date": "1985-03-14",
        "account_created": "2019-06",
    },
)
CONFIRM_EXAMPLE = Example(
    summary="the code from the email",
    value={"contact_email": "jane.doe@mail.example", "code": "042917"},
)
ANSWER_EXAMPLE = Example(
    summary="an answer to support's question",
    value={
        "token": "q8k2Vt3mYw0rX1bZcN5dLf7hJp9sA4eG6uTiOoPxRzE",
        "answer": "The last time I signed in was from Lyon, on my phone, in May.",
    },
)
CANCEL_EXAMPLE = Example(
    summary="the token of the notice's link",
    value={"token": "Zx81Lmq0Wd3kVb7nRt5yHs2Jc9fGa4eP6uTiOoNlQwE"},
)


def _ok(container: type, value: dict[str, Any], description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=container,
        description=description,
        examples=[Example(summary=description, value=value)],
    )


@post(
    "/",
    status_code=202,
    summary='"I can\'t access this email": ask support to recover an account',
    description=(
        "Always 202 for a well-formed request, whether or not the address has an "
        "account: the request is only recorded. A code then goes to the contact address "
        "(POST /api/assisted-recovery/confirm); only a confirmed case reaches support. "
        "The account's address, if it has one, is told and can cancel. Throttled like "
        '"Forgot password?" (per address, per contact address, per IP).'
    ),
    responses={
        202: _ok(Accepted, {"status": "accepted"}, "The request was recorded"),
        **documented(400, 413, 415, 429),
    },
)
async def request_case(
    request: Request[Any, Any, Any],
    data: Annotated[AssistedRequest, Body(examples=[REQUEST_EXAMPLE])],
    services: NamedDependency[Services],
    lang: Lang = None,
) -> Accepted:
    case, problems = assisted_recovery.check_request(
        email=data.email,
        contact_email=data.contact_email,
        name=data.name,
        statement=data.statement,
        birth_date=data.birth_date,
        account_created=data.account_created,
        today=assisted_recovery.today(services),
    )
    if case is None:
        raise assisted_recovery.refusal(problems)
    await assisted_recovery.request(
        services,
        case,
        locale=request_locale(request, lang),
        client_ip=client_ip(request, parse_networks(services.settings.trusted_proxies)),
        user_agent=request.headers.get("user-agent"),
    )
    return Accepted()


@post(
    "/confirm",
    status_code=200,
    summary="Confirm the contact address with the emailed code (the case then reaches support)",
    description=(
        "A wrong code, a dead one (too many wrong tries, or past its 24 hours) and an "
        "address with no case waiting all answer the same 400 invalid_code, whether or "
        "not the account exists."
    ),
    responses={
        200: _ok(Confirmed, {"status": "confirmed"}, "The contact address is confirmed"),
        **documented(400, 413, 415, 429),
    },
)
async def confirm_contact(
    data: Annotated[ConfirmBody, Body(examples=[CONFIRM_EXAMPLE])],
    services: NamedDependency[Services],
) -> Confirmed:
    await assisted_recovery.confirm(services, data.contact_email, data.code)
    return Confirmed()


@post(
    "/answer",
    status_code=200,
    summary="Answer support's question (the token of the emailed link, used once)",
    description="The case goes back to support's queue.",
    opt={CONSUMES_TOKEN: True},
    responses={
        200: _ok(Answered, {"status": "answered"}, "The answer joined the case"),
        **documented(400, 409, 410, 413, 415, 429),
    },
)
async def answer_question(
    data: Annotated[AnswerBody, Body(examples=[ANSWER_EXAMPLE])],
    services: NamedDependency[Services],
) -> Answered:
    await assisted_recovery.answer(services, data.token, data.answer)
    return Answered()


@post(
    "/cancel",
    status_code=200,
    summary="\"This wasn't me\": cancel the case at once (the token of a notice's link)",
    responses={
        200: _ok(StateAnswer, {"state": "cancelled"}, "The case is cancelled"),
        **documented(400, 410, 413, 415, 429),
    },
)
async def cancel_case(
    data: Annotated[TokenBody, Body(examples=[CANCEL_EXAMPLE])],
    services: NamedDependency[Services],
) -> StateAnswer:
    attempt = await assisted_recovery.cancel_case(services, data.token)
    return StateAnswer(state=attempt.state)


router = Router(
    path=PATH,
    route_handlers=[request_case, confirm_contact, answer_question, cancel_case],
    tags=["public"],
    # JSON clients send no CSRF cookie; these endpoints take no ambient credentials.
    opt={"exclude_from_csrf": True},
)

route_handlers: list[Any] = [router]
