"""The result in the channel: the progress message becomes the result, with the images shown inline.

Slack shows an uploaded file in a Block Kit ``image`` block (``slack_file: {"id": ...}``) only once the file
is shared where the block is posted. ``files_upload_v2`` shares a file by posting it somewhere, so the
front end uploads the images into the progress message's thread (one quiet reply; a top-level upload
would show every image twice in the channel, and a file uploaded without a channel stays private to the
bot and is refused in blocks). Sharing finishes in the background after the upload returns:
``files.info`` tells when the file appears in the channel's shares.

Then the progress message is edited into the result (caption, image, buttons). If Slack refuses the
image block (``invalid_blocks``: an older workspace, a file it has not processed in time), the message
falls back to the caption and buttons with the images in the thread, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from imagine_bot.bots.slack.errors import SlackError, slack_error_code

log = logging.getLogger(__name__)

#: seconds between looks at files.info (or tries of chat.update when files.info is not allowed): ~5 s in all
WAITS = (0.5, 1.0, 1.5, 2.0)


def shared_in(file: dict[str, Any], channel: str) -> bool:
    """Whether a ``files.info`` file object is shared in ``channel`` (public or private)."""
    shares = file.get("shares") or {}
    return any(channel in (shares.get(kind) or {}) for kind in ("public", "private"))


async def wait_until_shared(client: AsyncWebClient, file_ids: Sequence[str], channel: str,
                            waits: Sequence[float] = WAITS) -> bool | None:
    """Poll ``files.info`` until every file is shared in ``channel``: True, False when it never was in
    time, None when ``files.info`` cannot tell (no ``files:read`` scope, an error)."""
    pending = list(file_ids)
    for wait in (0.0, *waits):
        if wait:
            await asyncio.sleep(wait)
        try:
            for file_id in list(pending):
                info = await client.files_info(file=file_id)
                if shared_in(info.get("file") or {}, channel):
                    pending.remove(file_id)
        except SlackError as exc:
            log.info("files.info unavailable (%s): trying the image block without it", slack_error_code(exc))
            return None
        if not pending:
            return True
    return False


async def show_result(client: AsyncWebClient, channel: str, ts: str, file_ids: Sequence[str],
                      inline: dict[str, Any], fallback: dict[str, Any], waits: Sequence[float] = WAITS) -> bool:
    """Edit the message at ``channel``/``ts`` into ``inline``; True if Slack took it, False if it fell back
    to ``fallback``. Other Slack errors are raised.

    When ``files.info`` says the files are shared, a refusal is final (the workspace will not show them),
    so one try; when it cannot tell, the edit is retried with the same waits."""
    shared = await wait_until_shared(client, file_ids, channel, waits)
    tries = (0.0, *waits) if shared is None else (0.0,)
    for wait in tries:
        if wait:
            await asyncio.sleep(wait)
        try:
            await client.chat_update(channel=channel, ts=ts, **inline)
            return True
        except SlackApiError as exc:
            if slack_error_code(exc) != "invalid_blocks":
                raise
            log.info("image block refused in %s (shared: %s): %s", channel, shared, exc.response.get("errors"))
    log.warning("Slack would not show the image inline in %s; it stays in the message's thread", channel)
    await client.chat_update(channel=channel, ts=ts, **fallback)
    return False
