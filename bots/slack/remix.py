"""Edits from Slack: the **Remix with imagine** message shortcut and the **Vary** / **Remix** result buttons.

- The shortcut (callback id ``remix_with_imagine``) on a message with image files opens a modal (prompt,
  aspect ratio, quality). On submit, the files are downloaded with the bot token (``url_private_download``
  needs it, and the ``files:read`` scope), checked and kept by the core, served to the gateway at
  ``PUBLIC_URL/refs/<signed token>``, and the edit is posted in that message's thread.
- **Vary** runs the result's prompt again with the result as the reference; **Remix** opens the same modal
  with the result's prompt to change. Both are for the requester or an admin; each is a new paid job.

Everything the submission needs travels in the modal's ``private_metadata`` (JSON), so nothing is kept
in this process: a modal opened before a restart still works when submitted after it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient

from imagine_bot.bots.slack import blocks
from imagine_bot.bots.slack.errors import SlackError, slack_error_code
from imagine_bot.bots.slack.handlers import NOT_ALLOWED, SlackHandlers, _team_of, reply_to
from imagine_bot.core.chat import messages
from imagine_bot.core.errors import ImagineError, UserInputError
from imagine_bot.core.media.references import FETCH_CAP_BYTES, Reference

log = logging.getLogger(__name__)

#: file types worth offering as references (the core checks the content itself)
IMAGE_TYPES = ("png", "jpg", "jpeg", "webp")
#: private_metadata holds at most 3000 characters
METADATA_MAX = 3000


def _image_files(message: dict[str, Any], limit: int) -> list[dict[str, str]]:
    files = []
    for item in message.get("files") or []:
        mimetype = str(item.get("mimetype") or "")
        if not (mimetype.startswith("image/") or str(item.get("filetype") or "").lower() in IMAGE_TYPES):
            continue
        url = item.get("url_private_download") or item.get("url_private")
        if url:
            files.append({"name": str(item.get("name") or item.get("title") or "image"), "url": str(url)})
    return files[:limit]


class SlackRemix:
    def __init__(self, handlers: SlackHandlers) -> None:
        self.handlers = handlers
        self.core = handlers.core
        self.session: aiohttp.ClientSession = handlers.frontend.session

    def register(self, app: Any) -> None:
        app.shortcut(blocks.SHORTCUT_REMIX)(self.on_shortcut)
        app.action(blocks.ACTION_VARY)(self.on_vary)
        app.action(blocks.ACTION_REMIX)(self.on_remix)
        app.view(blocks.VIEW_REMIX)(self.on_submit)

    # ------------------------------------------------------------------ Bolt listeners
    async def on_shortcut(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.handlers.guarded("remix shortcut", self.open_for_message(body))

    async def on_vary(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        self.handlers.guarded("vary", self.vary(body, str(action.get("value", ""))))

    async def on_remix(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        self.handlers.guarded("remix", self.open_for_job(body, str(action.get("value", ""))))

    async def on_submit(self, ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        values = view.get("state", {}).get("values", {})
        prompt = str((values.get("prompt", {}).get("prompt") or {}).get("value") or "")
        chosen = {name: str(((values.get(name) or {}).get(name) or {}).get("selected_option", {}).get("value"))
                  for name in (spec.name for spec in self.core.model.inputs)
                  if ((values.get(name) or {}).get(name) or {}).get("selected_option")}
        try:
            self.core.parse(prompt, chosen)  # a bad prompt is shown on the form itself, nothing sent yet
        except UserInputError as error:
            await ack(response_action="errors", errors={"prompt": error.user_message[:150]})
            return
        await ack()
        meta = json.loads(view.get("private_metadata") or "{}")
        self.handlers.guarded("remix submit", self.submit(body, view, meta, prompt, chosen))

    # ------------------------------------------------------------------ the work
    def _where(self, body: dict[str, Any]) -> tuple[str, str, str, str | None]:
        team, user = _team_of(body), body["user"]["id"]
        channel = str((body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id") or "")
        return team, user, channel, body.get("response_url")

    async def open_for_message(self, body: dict[str, Any]) -> None:
        team, user, channel, response_url = self._where(body)
        message = body.get("message") or {}
        files = _image_files(message, self.core.edit_model.references[1])
        try:
            if not self.handlers.allowed(team):
                raise UserInputError(NOT_ALLOWED)
            if not files:
                raise UserInputError(messages.no_images_to_remix())
            self.core.check_can_submit(await self.handlers.actor(body, user, channel, check_admin=False), edit=True)
            await self.core.check_reply(reply_to(body, channel, None))  # before the form: can the result go there?
        except ImagineError as error:
            await self.handlers._reply(await self.handlers.api(body), user, channel, response_url, error.user_message)
            return
        meta: dict[str, Any] = {"channel": channel, "thread_ts": message.get("thread_ts") or message.get("ts"),
                "files": files, "response_url": response_url}
        while len(json.dumps(meta)) > METADATA_MAX and len(meta["files"]) > 1:
            meta["files"] = meta["files"][:-1]  # keep what fits (the first images matter most)
        await self._open(body, meta, prompt="", chosen={})

    async def open_for_job(self, body: dict[str, Any], job_id: str) -> None:
        _, user, channel, response_url = self._where(body)
        try:
            original = self.core.check_can_vary(await self.handlers.actor(body, user, channel, check_admin=True),
                                                job_id)
            await self.core.check_reply(reply_to(body, channel, None))
        except ImagineError as error:
            await self.handlers._reply(await self.handlers.api(body), user, channel, response_url, error.user_message)
            return
        chosen = {k: str(v) for k, v in original.params.items() if k in ("aspect_ratio", "quality")}
        await self._open(body, {"channel": channel, "job_id": job_id, "response_url": response_url},
                         prompt=original.prompt, chosen=chosen)

    async def _open(self, body: dict[str, Any], meta: dict[str, Any], *, prompt: str, chosen: dict[str, str]) -> None:
        model = self.core.model
        # no aspect ratio preselected unless the result's: left empty, the edit keeps the image's shape
        preset = {k: v for k, v in model.defaults().items() if k != "aspect_ratio"}
        view = blocks.remix_modal(json.dumps(meta), {s.name: s.choices for s in model.inputs},
                                  {**preset, **chosen}, prompt=prompt, max_prompt=model.max_prompt_chars)
        api = await self.handlers.api(body)
        if api is None:
            return
        try:
            await api.views_open(trigger_id=body["trigger_id"], view=view)
        except SlackError as exc:
            log.warning("slack: could not open the remix modal: %s", slack_error_code(exc))

    async def vary(self, body: dict[str, Any], job_id: str) -> None:
        team, user, channel, response_url = self._where(body)
        reply = reply_to(body, channel, response_url)
        trigger = body.get("trigger_id")
        try:
            actor = await self.handlers.actor(body, user, channel, check_admin=True)
            job = await self.core.vary(actor, job_id, reply, dedupe_key=f"slack:{team}:{trigger}" if trigger else None)
        except ImagineError as error:
            await self.handlers._reply(await self.handlers.api(body), user, channel, response_url, error.user_message)
            return
        log.info("job %s: vary of %s by %s", job.id, job_id, user)

    async def submit(self, body: dict[str, Any], view: dict[str, Any], meta: dict[str, Any], prompt: str,
                     chosen: dict[str, str]) -> None:
        team, user = _team_of(body), body["user"]["id"]
        channel, response_url = str(meta.get("channel") or ""), meta.get("response_url")
        dedupe = f"slack:{team}:view:{view.get('id')}:{view.get('hash', '')}"
        api = await self.handlers.api(body)
        try:
            actor = await self.handlers.actor(body, user, channel, check_admin=bool(meta.get("job_id")))
            if meta.get("job_id"):
                job = await self.core.vary(actor, str(meta["job_id"]), reply_to(body, channel, response_url),
                                           prompt=prompt, defaults=chosen, dedupe_key=dedupe)
            else:
                self.core.check_can_submit(actor, edit=True)  # before downloading anything
                references = [await self._download(api, f["name"], f["url"]) for f in meta.get("files") or []]
                job = await self.core.imagine(actor, reply_to(body, channel, response_url,
                                                              in_thread_of=meta.get("thread_ts")), prompt,
                                              defaults=chosen, references=references, dedupe_key=dedupe)
        except ImagineError as error:
            await self.handlers._reply(api, user, channel, response_url, error.user_message)
            return
        log.info("job %s: remix%s by %s", job.id, f" of {meta['job_id']}" if meta.get("job_id") else "", user)

    async def _download(self, api: AsyncWebClient | None, name: str, url: str) -> Reference:
        """A private Slack file, fetched with the workspace's bot token (never the user's): its bytes for the core."""
        headers = {"Authorization": f"Bearer {api.token}"} if api is not None else {}
        try:
            async with self.session.get(url, headers=headers, allow_redirects=True) as response:
                if response.status != 200:
                    raise UserInputError(messages.references_refused(
                        [messages.reference_unreachable(name, f"Slack answered HTTP {response.status}")]))
                if response.content_type == "text/html":  # Slack's sign-in page: the token may not read files
                    raise UserInputError(messages.references_refused([messages.reference_unreachable(
                        name, "Slack would not let the bot read it: the app needs the files:read scope")]))
                data = await response.content.read(FETCH_CAP_BYTES + 1)
        except aiohttp.ClientError as exc:
            raise UserInputError(messages.references_refused(
                [messages.reference_unreachable(name, type(exc).__name__)])) from exc
        return Reference(name=name, data=data)
