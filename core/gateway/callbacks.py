"""Reading gateway callbacks (gateway contract, "Callbacks and webhooks").

Two shapes arrive at the same URL and both are accepted:

- kie per-task callback: the recordInfo envelope, ``{"code": 200, "msg": ..., "data": {"taskId": ...}}``,
  optionally signed with ``X-Webhook-Timestamp`` and
  ``X-Webhook-Signature = base64(HMAC-SHA256(key=secret, msg=taskId + "." + timestamp))``;
- ModKie account webhook: ``{"event": "task.completed", "taskId": ..., ...}``, signed with
  ``X-ModKie-Signature: sha256=<HMAC-SHA256 of the raw body>``, in hex or base64 (both accepted).

The task id may be called ``taskId`` or ``task_id``, at the top level or under ``data``. When a secret is
configured, a callback without a valid signature is refused (``PermissionDenied``).

What a signature covers decides what may be trusted (``read_callback``):

- a ModKie account webhook whose ``X-ModKie-Signature`` verifies covers its whole raw body; when its state
  is final (success with result URLs, or fail) it is as good as a recordInfo answer, and
  ``Callback.final`` carries that answer: the orchestrator acts on it with no confirming recordInfo;
- everything else (unsigned, kie-signed over ``taskId.timestamp`` only, not final, no result URLs) is a
  hint: the orchestrator confirms it with recordInfo, so a replayed or forged hint does no harm (which is
  why the timestamp's age is not checked). A replayed trusted webhook repeats the same final answer for the
  same task (the task id is inside the signed body), so it cannot do harm either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagine_bot.core.errors import GatewayProtocolError, PermissionDenied
from imagine_bot.core.gateway.client import _STATES, TaskRecord, TaskStage, _as_int, _result_urls

#: what a task id may look like (gateway ids are like task_seedream_1765166238716 or 32 hex characters)
TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: callback bodies larger than this are refused unread (a recordInfo envelope is a few KB)
MAX_CALLBACK_BYTES = 256 * 1024
KIE_SIGNATURE = "X-Webhook-Signature"
KIE_TIMESTAMP = "X-Webhook-Timestamp"
MODKIE_SIGNATURE = "X-ModKie-Signature"


@dataclass(frozen=True, slots=True)
class Callback:
    """One callback, read: the task it names and, when it can be trusted, the task's final answer."""

    task_id: str
    #: the final recordInfo-equivalent answer of a verified ModKie account webhook; None for a hint
    final: TaskRecord | None = None


def read_callback(body: bytes, headers: Mapping[str, str], secret: str | None) -> Callback:
    """``parse_callback``, plus the final answer a verified ModKie account webhook carries (if any)."""
    task_id = parse_callback(body, headers, secret)
    if not secret or not _modkie_signed(body, headers, secret):
        return Callback(task_id)
    return Callback(task_id, _final_record(task_id, json.loads(body)))


def parse_callback(body: bytes, headers: Mapping[str, str], secret: str | None) -> str:
    """The task id a callback names, after checking its signature when ``secret`` is set."""
    task_id = _task_id(body)
    if secret:
        _verify(body, headers, secret, task_id)
    return task_id


def sign_kie(secret: str, task_id: str, timestamp: str) -> str:
    """The kie ``X-Webhook-Signature`` value for ``task_id`` at ``timestamp`` (seconds, as sent)."""
    digest = hmac.new(secret.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def sign_modkie(secret: str, body: bytes, *, encoding: str = "hex") -> str:
    """The ModKie ``X-ModKie-Signature`` value for a raw body (``encoding``: ``hex`` or ``base64``)."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    value = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    return f"sha256={value}"


def _task_id(body: bytes) -> str:
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise GatewayProtocolError(f"callback body is not JSON ({len(body)} bytes)") from None
    if not isinstance(payload, dict):
        raise GatewayProtocolError("callback body is not a JSON object")
    for holder in (payload, payload.get("data")):
        if isinstance(holder, dict):
            for key in ("taskId", "task_id"):
                value = holder.get(key)
                if isinstance(value, str) and value.strip():
                    task_id = value.strip()
                    if not TASK_ID.fullmatch(task_id):  # checked before it is logged or used anywhere
                        raise GatewayProtocolError(f"callback task id is not [A-Za-z0-9_-]{{1,128}} "
                                                   f"({len(task_id)} characters)")
                    return task_id
    raise GatewayProtocolError("callback names no taskId")


def _final_record(task_id: str, payload: Any) -> TaskRecord | None:
    """The final answer in a (verified) account webhook: state success with result URLs, or fail; else None.

    The fields are read where the task id was found (top level, or under ``data``); ``result`` is shaped
    like recordInfo's ``resultJson`` (an object, a JSON string, or a bare list of URLs).
    """
    holder = next((h for h in (payload, payload.get("data")) if isinstance(h, dict)
                   and str(h.get("taskId") or h.get("task_id") or "").strip() == task_id), None)
    if holder is None or not isinstance(holder.get("state"), str):
        return None
    state: str = holder["state"]
    stage = _STATES.get(state.strip().lower())
    urls: tuple[str, ...] = ()
    if stage is TaskStage.SUCCESS:
        raw = holder.get("result", holder.get("resultJson"))
        if isinstance(raw, list):
            raw = {"resultUrls": raw}
        try:
            urls = _result_urls(task_id, raw)
        except GatewayProtocolError:
            return None
        if not urls:
            return None
    elif stage is not TaskStage.FAIL:
        return None
    fail_code, fail_msg = holder.get("failCode"), holder.get("failMsg")
    return TaskRecord(
        task_id=task_id, stage=stage, state=state, result_urls=urls,
        fail_code=None if fail_code in (None, "") else str(fail_code),
        fail_msg=None if fail_msg in (None, "") else str(fail_msg),
        progress=None,
        consume_credits=_as_int(holder.get("creditsCharged", holder.get("consumeCredits"))),
        remained_credits=_as_int(holder.get("remainedCredits")),
    )


def _modkie_signed(body: bytes, headers: Mapping[str, str], secret: str) -> bool | None:
    """Whether the ``X-ModKie-Signature`` (over the whole raw body) verifies; None when there is none."""
    modkie = _header(headers, MODKIE_SIGNATURE)
    if modkie is None:
        return None
    given = modkie.strip()
    if given.lower().startswith("sha256="):
        given = given[len("sha256="):]
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return _same(given.lower(), digest.hex()) or _same(given, base64.b64encode(digest).decode())


def _verify(body: bytes, headers: Mapping[str, str], secret: str, task_id: str) -> None:
    modkie = _modkie_signed(body, headers, secret)
    if modkie is not None:
        if modkie:
            return
        raise PermissionDenied("callback: bad X-ModKie-Signature")
    signature, timestamp = _header(headers, KIE_SIGNATURE), _header(headers, KIE_TIMESTAMP)
    if signature is not None and timestamp is not None:
        if _same(signature.strip(), sign_kie(secret, task_id, timestamp.strip())):
            return
        raise PermissionDenied("callback: bad X-Webhook-Signature")
    raise PermissionDenied("callback: no signature, but a webhook secret is configured")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that works for plain dicts as well as multidicts."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, found in headers.items():
        if key.lower() == wanted:
            return found
    return None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())
