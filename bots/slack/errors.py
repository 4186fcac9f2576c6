"""What a failed Slack call looks like to us: the exceptions to catch and the error code to log or act on."""

from __future__ import annotations

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError

SlackError = (SlackApiError, SlackRequestError, aiohttp.ClientError, TimeoutError)


def slack_error_code(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error", "unknown_error"))
    return type(exc).__name__
