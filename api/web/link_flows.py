"""Which flow a recovery link belongs to, so its page and API routes call that flow.

Links of several flows share one form (`<public base URL>/recovery/reset?token=…`)
and one table (`api.accounts.links`): a "Forgot password?" email's link, and the
grant link of a support-handled recovery. The reset page and `POST
/api/recovery/verify|password|cancel` find the link's attempt, and call the
actions its flow declares in its `links` hook. A token that opens no link is
`UnknownToken` (400), whichever flow it might have been meant for.
"""

from __future__ import annotations

from api.accounts import links
from api.accounts.links import LinkActions
from api.errors import UnknownToken
from api.services import Services


async def actions_for(services: Services, token: object, *, cancel: bool = False) -> LinkActions:
    """The `links` actions of the flow whose attempt holds this link (with `cancel`, the
    token may also be a link's cancel-only one)."""
    engine = services.engine
    link = await engine.db.run(links.find, engine.db, token, cancel=cancel, write=False)
    record = await engine.db.run(engine.read_sync, link.attempt_id, write=False)
    actions = engine.spec_of(record).hooks.get("links")
    if not isinstance(actions, LinkActions):
        raise UnknownToken()
    return actions
