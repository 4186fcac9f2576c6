"""Gateway callbacks: both payload shapes, both signature schemes, refusals. Signatures are built here from
the contract's definition, not with the module's own helpers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from imagine_bot.core.errors import GatewayProtocolError, PermissionDenied
from imagine_bot.core.gateway import TaskStage, parse_callback, read_callback, sign_kie, sign_modkie

SECRET = "whsec-test-4242"
TASK = "task_seedream_17651662387161234"

KIE_BODY = json.dumps({"code": 200, "msg": "success", "data": {
    "taskId": TASK, "state": "success", "resultJson": json.dumps({"resultUrls": ["https://x.example/1.png"]}),
    "failCode": "", "failMsg": "", "consumeCredits": 18, "remainedCredits": 82}}).encode()
MODKIE_BODY = json.dumps({"event": "task.completed", "taskId": TASK, "state": "success", "provider": "seedream",
                          "capability": "image", "model": "seedream/4.5-text-to-image", "result": {},
                          "failMsg": None, "creditsCharged": 18, "timestamp": 1765166238716}).encode()


def kie_headers(task_id: str = TASK, timestamp: str = "1765166238", secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return {"X-Webhook-Timestamp": timestamp, "X-Webhook-Signature": base64.b64encode(digest).decode()}


def modkie_headers(body: bytes, encoding: str, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    value = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    return {"X-ModKie-Signature": f"sha256={value}"}


@pytest.mark.parametrize("body", [
    KIE_BODY,
    MODKIE_BODY,
    json.dumps({"task_id": TASK}).encode(),
    json.dumps({"code": 501, "data": {"task_id": TASK, "state": "fail"}}).encode(),
    json.dumps({"taskId": f"  {TASK} "}).encode(),
])
def test_both_shapes_without_a_secret(body: bytes) -> None:
    assert parse_callback(body, {}, None) == TASK


def test_kie_signature() -> None:
    assert parse_callback(KIE_BODY, kie_headers(), SECRET) == TASK


def test_headers_are_case_insensitive() -> None:
    headers = {name.lower(): value for name, value in kie_headers().items()}
    assert parse_callback(KIE_BODY, headers, SECRET) == TASK
    headers = {"x-modkie-signature": modkie_headers(MODKIE_BODY, "hex")["X-ModKie-Signature"]}
    assert parse_callback(MODKIE_BODY, headers, SECRET) == TASK


@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_modkie_signature(encoding: str) -> None:
    assert parse_callback(MODKIE_BODY, modkie_headers(MODKIE_BODY, encoding), SECRET) == TASK


def test_modkie_signature_without_prefix_and_upper_hex() -> None:
    digest = hmac.new(SECRET.encode(), MODKIE_BODY, hashlib.sha256).hexdigest().upper()
    assert parse_callback(MODKIE_BODY, {"X-ModKie-Signature": digest}, SECRET) == TASK


def test_helpers_match_the_contract() -> None:
    assert sign_kie(SECRET, TASK, "1765166238") == kie_headers()["X-Webhook-Signature"]
    for encoding in ("hex", "base64"):
        assert sign_modkie(SECRET, MODKIE_BODY, encoding=encoding) == \
            modkie_headers(MODKIE_BODY, encoding)["X-ModKie-Signature"]


@pytest.mark.parametrize(("body", "headers"), [
    (KIE_BODY, kie_headers(secret="other-secret")),
    (KIE_BODY, {**kie_headers(), "X-Webhook-Timestamp": "1765166239"}),  # signed for another moment
    (KIE_BODY, kie_headers(task_id="task_other")),  # signed for another task
    (KIE_BODY, {**kie_headers(), "X-Webhook-Signature": "bm90IGEgc2lnbmF0dXJl"}),
    (MODKIE_BODY, modkie_headers(MODKIE_BODY, "hex", secret="other-secret")),
    (MODKIE_BODY, modkie_headers(MODKIE_BODY, "base64", secret="other-secret")),
    (MODKIE_BODY, modkie_headers(MODKIE_BODY + b" ", "hex")),  # body changed after signing
    (MODKIE_BODY, {"X-ModKie-Signature": "sha256=\u00e9\u00e9"}),  # non-ASCII junk
    (MODKIE_BODY, {**modkie_headers(MODKIE_BODY, "hex", secret="x"), **kie_headers()}),  # a bad one is not excused
])
def test_bad_signature_is_refused(body: bytes, headers: dict[str, str]) -> None:
    with pytest.raises(PermissionDenied):
        parse_callback(body, headers, SECRET)


@pytest.mark.parametrize("headers", [{}, {"X-Webhook-Signature": kie_headers()["X-Webhook-Signature"]},
                                     {"X-Webhook-Timestamp": "1765166238"}])
def test_missing_signature_is_refused_when_a_secret_is_set(headers: dict[str, str]) -> None:
    with pytest.raises(PermissionDenied):
        parse_callback(KIE_BODY, headers, SECRET)


def test_signature_is_ignored_without_a_secret() -> None:
    assert parse_callback(KIE_BODY, kie_headers(secret="whatever"), None) == TASK


@pytest.mark.parametrize("body", [
    b"", b"not json", b"\xff\xfe\x00", b"[]", b'"task"', b"{}", b'{"code": 200, "data": null}',
    b'{"taskId": ""}', b'{"taskId": 12345}', b'{"data": {"state": "success"}}',
])
@pytest.mark.parametrize("secret", [None, SECRET])
def test_garbage_is_refused(body: bytes, secret: str | None) -> None:
    with pytest.raises(GatewayProtocolError):
        parse_callback(body, {}, secret)


# ---------------------------------------------------------------------- what may be trusted (read_callback)
URL = "https://x.example/1.png"


def account(state: str, result: object = None, **extra: object) -> bytes:
    return json.dumps({"event": "task.completed", "taskId": TASK, "state": state, "result": result,
                       "failMsg": None, "creditsCharged": 18, **extra}).encode()


@pytest.mark.parametrize("result", [{"resultUrls": [URL]}, json.dumps({"resultUrls": [URL]}), [URL]])
@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_a_signed_final_success_carries_its_answer(result: object, encoding: str) -> None:
    body = account("success", result)
    callback = read_callback(body, modkie_headers(body, encoding), SECRET)
    assert callback.task_id == TASK and callback.final is not None
    assert callback.final.stage is TaskStage.SUCCESS and callback.final.result_urls == (URL,)
    assert callback.final.consume_credits == 18


def test_a_signed_final_failure_carries_its_answer() -> None:
    body = account("fail", failMsg="nsfw content", failCode="400")
    final = read_callback(body, modkie_headers(body, "hex"), SECRET).final
    assert final is not None and final.stage is TaskStage.FAIL
    assert (final.fail_msg, final.fail_code, final.result_urls) == ("nsfw content", "400", ())


def test_a_signed_envelope_under_data_is_trusted_too() -> None:
    body = json.dumps({"code": 200, "data": {"task_id": TASK, "state": "completed",
                                             "resultJson": {"resultUrls": [URL]}}}).encode()
    final = read_callback(body, modkie_headers(body, "hex"), SECRET).final
    assert final is not None and final.result_urls == (URL,)


@pytest.mark.parametrize("body", [
    account("processing"), account("pending"), account("mystery"), account("success"),  # not final / no URLs
    account("success", {"resultUrls": []}), account("success", "not json"), account("success", [1, 2]),
    account("success", {"resultUrls": "x"}),
    json.dumps({"taskId": TASK, "result": [URL]}).encode(),  # no state
    json.dumps({"taskId": TASK, "state": 1}).encode(),
])
def test_signed_but_not_a_final_answer_is_a_hint(body: bytes) -> None:
    callback = read_callback(body, modkie_headers(body, "hex"), SECRET)
    assert callback.task_id == TASK and callback.final is None


def test_only_the_whole_body_signature_is_trusted() -> None:
    body = account("success", [URL])
    # kie signs taskId.timestamp only: the body could say anything
    assert read_callback(body, kie_headers(), SECRET).final is None
    # no secret configured: nothing is verified, so nothing is trusted
    assert read_callback(body, modkie_headers(body, "hex"), None).final is None
    with pytest.raises(PermissionDenied):
        read_callback(body, modkie_headers(body, "hex", secret="other-secret"), SECRET)
