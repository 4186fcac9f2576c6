"""Uploading a job's images to Slack at most once, even when the process dies half-way.

``files_upload_v2`` is three calls: ``files.getUploadURLExternal`` (one file id and upload URL per image),
a POST of the bytes to each URL, and ``files.completeUploadExternal``, which shares the files. The front
end makes them one by one so that the file ids are in the job's receipt (``pending_file_ids``) BEFORE
the files are shared. If the answer to ``completeUploadExternal`` is lost (a crash, a dropped connection,
a 5xx), ``files.info`` tells whether Slack shared them: then they are the delivery, and nothing is uploaded
again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from imagine_bot.bots.slack.errors import SlackError, slack_error_code
from imagine_bot.bots.slack.inline import WAITS, shared_in
from imagine_bot.core.errors import DeliveryInterrupted

log = logging.getLogger(__name__)

#: files.info answers meaning "Slack has no such (completed) file": it was never shared
UNKNOWN_FILE = frozenset({"file_not_found", "file_deleted"})


@dataclass(frozen=True, slots=True)
class NewFile:
    """One image to upload."""

    filename: str
    data: bytes
    title: str
    alt_txt: str


@dataclass(frozen=True, slots=True)
class Reserved:
    """A file id and the URL its bytes go to (from files.getUploadURLExternal)."""

    file_id: str
    upload_url: str
    file: NewFile


async def reserve(client: AsyncWebClient, files: Sequence[NewFile]) -> list[Reserved]:
    """Step 1: a file id and an upload URL for each file (nothing is visible in Slack yet)."""
    reserved = []
    for file in files:
        answer = await client.files_getUploadURLExternal(filename=file.filename, length=len(file.data),
                                                         alt_txt=file.alt_txt)
        reserved.append(Reserved(str(answer["file_id"]), str(answer["upload_url"]), file))
    return reserved


async def send(client: AsyncWebClient, session: aiohttp.ClientSession, reserved: Reserved) -> None:
    """Step 2: POST the raw bytes to the upload URL, as slack_sdk's ``files_upload_v2`` does (no token)."""
    extra: dict[str, Any] = {"proxy": client.proxy} if client.proxy else {}
    if client.ssl is not None:
        extra["ssl"] = client.ssl
    async with session.post(reserved.upload_url, data=reserved.file.data,
                            timeout=aiohttp.ClientTimeout(total=client.timeout), **extra) as response:
        body = await response.text()
        if response.status != 200:
            raise SlackRequestError(f"Failed to upload a file (status: {response.status}, body: {body[:200]}, "
                                    f"filename: {reserved.file.filename})")


def answer_lost(exc: BaseException) -> bool:
    """Whether a failed call may still have been done by Slack: no answer, or a 5xx (not a clear refusal)."""
    if isinstance(exc, SlackApiError):
        return int(exc.response.status_code) >= 500
    return True


async def shared(client: AsyncWebClient, file_ids: Sequence[str], channel: str,
                 waits: Sequence[float] = WAITS) -> bool | None:
    """Whether Slack shared every file in ``channel`` (``files.info``, looking again with ``waits`` while
    Slack may still be processing them): True; False when a file is unknown or never shows up shared;
    None when the token lacks ``files:read`` (nobody can tell). Any other error raises
    ``DeliveryInterrupted``: "not uploaded" is never guessed, and the answer may come on the next attempt,
    which asks again about the same pending file ids (a refusal here would refund an image already in the
    channel)."""
    pending = list(file_ids)
    for wait in (0.0, *waits):
        if wait:
            await asyncio.sleep(wait)
        for file_id in list(pending):
            try:
                info = await client.files_info(file=file_id)
            except SlackError as exc:
                code = slack_error_code(exc)
                if code in UNKNOWN_FILE:
                    return False
                if code == "missing_scope":
                    return None
                raise DeliveryInterrupted(f"Slack files.info failed ({code}): cannot tell whether {file_id} "
                                          "was uploaded") from exc
            if shared_in(info.get("file") or {}, channel):
                pending.remove(file_id)
        if not pending:
            return True
    return False
