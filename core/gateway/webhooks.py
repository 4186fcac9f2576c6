"""The ModKie account webhook: registered at start, so that finished tasks reach the bot signed over their
whole body and need no confirming recordInfo (gateway contract, "Callbacks and webhooks").

``imagine-bot run`` calls ``register_account_webhook`` when ``PUBLIC_URL`` and ``MODKIE_WEBHOOK_SECRET``
are both set: ``POST /api/gateway/webhooks {"url": PUBLIC_URL/callbacks/modkie, "secret": ...}``. The
gateway keeps one URL per account, so registering again at every start changes nothing. A refusal is a
warning, never a crash: the bot then keeps per-task callbacks (hints, confirmed with recordInfo) and
polling. ``imagine-bot doctor`` can call the same function to show the line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from imagine_bot.core.errors import GatewayError
from imagine_bot.core.gateway import GatewayClient
from imagine_bot.core.settings import Settings

log = logging.getLogger(__name__)


class WebhookState(StrEnum):
    REGISTERED = "registered"
    NOT_CONFIGURED = "not configured"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class WebhookRegistration:
    state: WebhookState
    url: str | None
    #: one line for the log or the doctor
    detail: str

    @property
    def registered(self) -> bool:
        return self.state is WebhookState.REGISTERED


async def register_account_webhook(gateway: GatewayClient, settings: Settings) -> WebhookRegistration:
    """Register ``PUBLIC_URL/callbacks/modkie`` with the secret; never raises for a gateway refusal."""
    url, secret = settings.callback_url, settings.MODKIE_WEBHOOK_SECRET
    if not url or secret is None or not secret.get_secret_value():
        return WebhookRegistration(
            WebhookState.NOT_CONFIGURED, url,
            "set PUBLIC_URL and MODKIE_WEBHOOK_SECRET to have finished images arrive signed, with no polling")
    try:
        await gateway.register_webhook(url, secret.get_secret_value())
    except GatewayError as error:
        detail = f"the gateway refused the account webhook {url}: {error.admin_message}"
        log.warning("%s; per-task callbacks (confirmed with recordInfo) and polling carry on", detail)
        return WebhookRegistration(WebhookState.FAILED, url, detail)
    detail = f"account webhook {url} registered: signed final webhooks deliver with no recordInfo"
    log.info("%s", detail)
    return WebhookRegistration(WebhookState.REGISTERED, url, detail)
