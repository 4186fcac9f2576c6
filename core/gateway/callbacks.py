"""Reading gateway callbacks (gateway contract, "Callbacks and webhooks").

Two shapes arrive at the same URL and both are accepted:

- kie per-task callback: the recordInfo envelope, ``{"code": 200, "msg": ..., "data": {"taskId": ...}}``,
  optionally signed with ``X-Webhook-Timestamp`` and
  ``X-Webhook-Signature = base64(HMAC-SHA256(key=secret, msg=taskId + "." + timestamp))``;
- ModKie account webhook: ``{"event": "task.completed", "taskId": ..., ...}``, signed with
  ``X-ModKie-Signature: sha256=<HMAC-SHA256 of the raw body>``, in hex or base64 (both accepted).

The task id may be called ``taskId`` or ``task_id``, at the top level or under ``data``. When a secret is
configured, a callback without a valid signature is refused (``PermissionDenied``). A callback is only a
hint: the orchestrator confirms with recordInfo, so only the task id is returned and a replayed callback
does no harm (which is why the timestamp's age is not checked).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from ..errors import GatewayProtocolError, PermissionDenied

KIE_SIGNATURE = "X-Webhook-Signature"
KIE_TIMESTAMP = "X-Webhook-Timestamp"
MODKIE_SIGNATURE = "X-ModKie-Signature"


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
                    return value.strip()
    raise GatewayProtocolError("callback names no taskId")


def _verify(body: bytes, headers: Mapping[str, str], secret: str, task_id: str) -> None:
    modkie = _header(headers, MODKIE_SIGNATURE)
    if modkie is not None:
        given = modkie.strip()
        if given.lower().startswith("sha256="):
            given = given[len("sha256="):]
        digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        if _same(given.lower(), digest.hex()) or _same(given, base64.b64encode(digest).decode()):
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
