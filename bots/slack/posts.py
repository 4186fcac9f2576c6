"""Posting a job's message at most once, though Slack has no idempotency key.

A ``chat.postMessage`` whose answer is lost (the connection dropped or timed out after the request went
out, a 5xx) may have been carried out: posting again could show the job's message twice. So every message a
job's delivery posts (the result message, its DM when the channel refuses it, an approved image, a reviewer's
buttons) goes through ``post_once``:

- it carries ``metadata`` naming the job and what the message is for (``event_type`` ``imagine_job_post``);
- the moment the attempt begins is recorded (``begin``, in the job's state) BEFORE the request goes out;
- an attempt that finds such a moment recorded with no message (the answer never came) first looks for the
  earlier post: ``conversations.history`` (``conversations.replies`` in a thread) from a minute before that
  moment, with ``include_all_metadata``. Found, it is the message, and nothing is posted again.

The posts go through the ``posts`` client, which does not repeat a request on a dropped connection
(slack_sdk's ``ConnectionErrorRetryHandler`` would post again blindly): the next attempt looks first.

Reading history needs ``channels:history``, ``groups:history``, ``im:history`` and ``mpim:history``. Without
them (``missing_scope``, an older install) nobody can tell: the message is posted again and a warning names
the scopes. Any other failure to read raises ``DeliveryInterrupted``: "not posted" is never guessed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from imagine_bot.bots.slack.errors import SlackError, slack_error_code
from imagine_bot.core.errors import DeliveryInterrupted

log = logging.getLogger(__name__)

EVENT_TYPE = "imagine_job_post"
#: the earlier post is looked for from this long before its attempt began (Slack's clock is not ours)
CLOCK_MARGIN_S = 60.0
#: history pages (of ``PAGE``) looked through at most
PAGES = 10
PAGE = 200
#: answers meaning "this token may not read that conversation's history": nobody can tell
CANNOT_READ = frozenset({"missing_scope", "not_in_channel", "channel_not_found", "no_permission"})
HISTORY_SCOPES = "channels:history, groups:history, im:history and mpim:history"


def metadata(job_id: str, purpose: str) -> dict[str, Any]:
    """The message metadata that names a job's post (``chat.postMessage``'s ``metadata``)."""
    return {"event_type": EVENT_TYPE, "event_payload": {"job_id": job_id, "post": purpose}}


def _ours(message: dict[str, Any], job_id: str, purpose: str) -> bool:
    meta = message.get("metadata") or {}
    payload = meta.get("event_payload") or {}
    return (meta.get("event_type") == EVENT_TYPE and payload.get("job_id") == job_id
            and payload.get("post") == purpose)


async def earlier_post(client: AsyncWebClient, channel: str, job_id: str, purpose: str, since: float,
                       thread_ts: str | None = None) -> str | None:
    """The ts of this job's ``purpose`` post in ``channel`` (a reply of ``thread_ts``) made after ``since``
    (epoch seconds, less ``CLOCK_MARGIN_S``), or None: not found, or the token may not read the history (logged).
    Raises ``DeliveryInterrupted`` when Slack does not answer."""
    oldest = f"{max(0.0, since - CLOCK_MARGIN_S):.6f}"
    cursor: str | None = None
    for _ in range(PAGES):
        paging: dict[str, Any] = {"cursor": cursor} if cursor else {}
        try:
            if thread_ts:
                answer = await client.conversations_replies(channel=channel, ts=thread_ts, oldest=oldest, limit=PAGE,
                                                            include_all_metadata=True, **paging)
            else:
                answer = await client.conversations_history(channel=channel, oldest=oldest, limit=PAGE,
                                                            include_all_metadata=True, **paging)
        except SlackError as exc:
            code = slack_error_code(exc)
            if code in CANNOT_READ:
                log.warning("job %s: cannot read %s to tell whether its %s post was made (%s): posting again, so it "
                            "may show twice; add %s to the app", job_id, channel, purpose, code, HISTORY_SCOPES)
                return None
            raise DeliveryInterrupted(f"Slack conversations.history failed ({code}): cannot tell whether the "
                                      f"{purpose} post of job {job_id} was made") from exc
        for message in answer.get("messages") or []:
            if _ours(message, job_id, purpose):
                return str(message["ts"])
        cursor = (answer.get("response_metadata") or {}).get("next_cursor") or None
        if not answer.get("has_more") or not cursor:
            return None
    return None


async def post_once(client: AsyncWebClient, job_id: str, purpose: str, *, started: float | None,
                    begin: Callable[[float], object], **message: Any) -> tuple[str, str]:
    """``chat.postMessage(**message)`` for the job's ``purpose``, at most once: ``started`` is when an earlier
    attempt at it began (recorded by ``begin`` and read back by the caller; None: none began). Returns the
    message's (channel, ts)."""
    channel = str(message["channel"])
    if started is not None:
        ts = await earlier_post(client, channel, job_id, purpose, started, message.get("thread_ts"))
        if ts is not None:
            log.info("job %s: its %s post %s was made by an attempt whose answer was lost: not posting again",
                     job_id, purpose, ts)
            return channel, ts
    begin(time.time())  # first: an answer lost from here on is looked for by the next attempt
    answer = await client.chat_postMessage(metadata=metadata(job_id, purpose), **message)
    return str(answer["channel"]), str(answer["ts"])
