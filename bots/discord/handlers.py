"""What each slash command and button does: translate the interaction, call the core, answer.

Visibility is decided before the 3-second acknowledgement, because Discord cannot turn a public
"thinking" response into a private one: everything that can be refused cheaply (the prompt and its
flags, banned words, the balance, the jobs in flight) is checked first and refused privately
(ephemeral); only then is the interaction deferred publicly and the job submitted. If the core still
refuses (a race with another job), the public placeholder is deleted and the reason sent privately.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from imagine_bot.bots.discord.hook import ReplyData
from imagine_bot.bots.discord.modals import (
    FOR_JOB,
    FOR_MESSAGE,
    REJECT_FORM,
    for_job,
    for_message,
    read_reason,
    read_submission,
    reject_modal,
    remix_modal,
)
from imagine_bot.core.access.authority import Actor, place_key
from imagine_bot.core.access.identity import UserRef
from imagine_bot.core.app import ImagineCore
from imagine_bot.core.chat import admin, messages
from imagine_bot.core.errors import ImagineError, UserInputError
from imagine_bot.core.jobs.model import Job, ReplyTo
from imagine_bot.core.media.references import Reference

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()


def user_ref(user: discord.abc.Snowflake) -> UserRef:
    """One account per Discord user, whatever the server."""
    return UserRef("discord", "-", str(user.id))


def manages_server(interaction: discord.Interaction) -> bool:
    """Discord's word that the member has Manage Server *in this server* (a community admin there)."""
    return interaction.guild_id is not None and interaction.permissions.manage_guild


def actor_of(interaction: discord.Interaction) -> Actor:
    """Who acts where: the server (None in DMs), the channel, and the platform facts we vouch for.
    The core decides what they may do; Manage Server never makes anyone an operator."""
    guild = interaction.guild_id
    return Actor(user_ref(interaction.user), place=place_key("discord", str(guild)) if guild else None,
                 channel=str(interaction.channel_id) if interaction.channel_id else None,
                 community_admin=manages_server(interaction), nsfw_channel=channel_is_nsfw(interaction))


def channel_is_nsfw(interaction: discord.Interaction) -> bool:
    is_nsfw = getattr(interaction.channel, "is_nsfw", None)
    return bool(callable(is_nsfw) and is_nsfw())


async def reply_private(interaction: discord.Interaction, text: str, *, file: discord.File | None = None) -> None:
    """An answer only the user who asked sees."""
    extra: dict[str, Any] = {"file": file} if file is not None else {}
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS, **extra)
    else:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS, **extra)


def _looks_like_image(attachment: discord.Attachment) -> bool:
    """Worth offering as a reference (the core checks the content itself before anything is charged)."""
    declared = (attachment.content_type or "").split(";")[0].strip().lower()
    return declared.startswith("image/") or attachment.filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))


def _references(message: discord.Message, limit: int) -> list[Reference]:
    return [Reference(name=a.filename, url=a.url) for a in message.attachments if _looks_like_image(a)][:limit]


class Handlers:
    def __init__(self, core: ImagineCore) -> None:
        self.core = core

    # ------------------------------------------------------------------ jobs
    async def imagine(self, interaction: discord.Interaction, prompt: str, aspect_ratio: str | None,
                      quality: str | None, attachments: list[discord.Attachment] | None = None, *,
                      preset: str | None = None) -> None:
        """``/imagine``; with attachments, an edit of them (their public CDN URLs go to the gateway as they
        are, after the core has checked their type and size). ``preset`` names a brand preset (``none``: not
        even the channel's default)."""
        who = actor_of(interaction)
        # explicit options are defaults: a flag typed in the prompt (--ar 16:9) wins over them
        defaults = {name: value for name, value in (("aspect_ratio", aspect_ratio), ("quality", quality)) if value}
        references = [Reference(name=a.filename, url=a.url) for a in attachments or []]
        with self.core.answering():  # the work of jobs already accepted waits for this ack
            try:
                prepared = self.core.prepare_checked(who, prompt, defaults=defaults, preset=preset,
                                                     edit=bool(references))
            except ImagineError as error:
                await reply_private(interaction, error.user_message)
                return
            await self._acknowledge(interaction, private=bool(prepared.reviewers))
        # the job itself once the commands arriving with this one are answered too (a burst's defers first);
        # a refusal then (the balance spent meanwhile) withdraws the placeholder
        await self.core.after_answers()
        extra = {"nsfw_checker": not channel_is_nsfw(interaction)}
        await self._submit_job(interaction, lambda reply: self.core.imagine(
            who, reply, prompt, dedupe_key=f"discord:{interaction.id}", defaults=defaults, extra_input=extra,
            references=references, preset=preset, channel_preset=True))

    async def remix_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The message context menu: a modal for the prompt, then an edit of the message's images here."""
        try:
            if not _references(message, self.core.edit_model.references[1]):
                raise UserInputError(messages.no_images_to_remix())
            self.core.check_can_submit(actor_of(interaction), edit=True)
        except ImagineError as error:
            await reply_private(interaction, error.user_message)
            return
        await interaction.response.send_modal(remix_modal(self.core.model, for_message(message.channel.id, message.id)))

    async def remix_result(self, interaction: discord.Interaction, job_id: str) -> None:
        """Remix: a modal (the original prompt to change), then an edit of this result."""
        try:
            original = self.core.check_can_vary(actor_of(interaction), job_id)
        except ImagineError as error:
            await reply_private(interaction, error.user_message)
            return
        defaults = {k: str(v) for k, v in original.params.items() if k in ("aspect_ratio", "quality")}
        await interaction.response.send_modal(remix_modal(self.core.model, for_job(job_id), prompt=original.prompt,
                                                          defaults=defaults))

    async def remix_submitted(self, interaction: discord.Interaction, custom_id: str) -> None:
        """A Remix modal came back (from this process or an earlier one): the edit, in this channel."""
        data: dict[str, Any] = dict(interaction.data) if isinstance(interaction.data, dict) else {}
        prompt, values = read_submission(dict(data), self.core.model)
        who = actor_of(interaction)
        job_match, message_match = FOR_JOB.match(custom_id), FOR_MESSAGE.match(custom_id)
        try:
            self.core.parse(prompt, values)
            if job_match:
                self.core.check_can_vary(who, job_match["job_id"])
            else:
                self.core.check_can_submit(who, edit=True)
        except ImagineError as error:
            await reply_private(interaction, error.user_message)
            return
        extra = {"nsfw_checker": not channel_is_nsfw(interaction)}
        dedupe = f"discord:{interaction.id}"
        if job_match:
            await self._start_job(interaction, lambda reply: self.core.vary(
                who, job_match["job_id"], reply, prompt=prompt, defaults=values, dedupe_key=dedupe, extra_input=extra))
            return
        assert message_match is not None

        async def submit(reply: ReplyTo) -> Job:
            channel = interaction.client.get_partial_messageable(int(message_match["channel_id"]))
            try:  # the message as it is now (its attachment links are fresh)
                message = await channel.fetch_message(int(message_match["message_id"]))
            except discord.HTTPException as error:
                raise UserInputError(messages.no_images_to_remix()) from error
            references = _references(message, self.core.edit_model.references[1])
            return await self.core.imagine(who, reply, prompt, dedupe_key=dedupe, defaults=values, extra_input=extra,
                                           references=references)

        await self._start_job(interaction, submit)

    async def vary(self, interaction: discord.Interaction, job_id: str) -> None:
        """Vary: the same prompt with this result as the reference; the requester or an admin only."""
        who = actor_of(interaction)
        try:
            self.core.check_can_vary(who, job_id)
        except ImagineError as error:
            await reply_private(interaction, error.user_message)
            return
        extra = {"nsfw_checker": not channel_is_nsfw(interaction)}
        await self._start_job(interaction, lambda reply: self.core.vary(
            who, job_id, reply, dedupe_key=f"discord:{interaction.id}", extra_input=extra))

    async def reroll(self, interaction: discord.Interaction, job_id: str) -> None:
        who = actor_of(interaction)
        try:
            self.core.job(job_id)
            self._check_can_start(who)
        except ImagineError as error:
            await reply_private(interaction, error.user_message)
            return
        extra = {"nsfw_checker": not channel_is_nsfw(interaction)}
        await self._start_job(interaction, lambda reply: self.core.reroll(
            who, job_id, reply, dedupe_key=f"discord:{interaction.id}", extra_input=extra))

    async def delete(self, interaction: discord.Interaction, job_id: str) -> None:
        try:
            self.core.check_delete(actor_of(interaction), job_id)
        except ImagineError as error:
            await reply_private(interaction, error.user_message)
            return
        await interaction.response.defer()  # a component's "original" is the message it is on
        try:
            await interaction.delete_original_response()
        except discord.HTTPException as error:
            log.warning("could not delete the message of job %s: %s", job_id, error)
            await reply_private(interaction, ImagineError().user_message)
            return
        await reply_private(interaction, messages.deleted())

    def _check_can_start(self, who: Actor) -> None:
        """The refusals the core would make, checked before the public acknowledgement."""
        self.core.check_can_submit(who)

    async def _start_job(self, interaction: discord.Interaction,
                         submit: Callable[[ReplyTo], Awaitable[Job]]) -> None:
        await self._acknowledge(interaction)
        await self._submit_job(interaction, submit)

    async def _acknowledge(self, interaction: discord.Interaction, *, private: bool | None = None) -> None:
        """The public placeholder ("thinking..."); ``private``: whether the channel has reviewers, as just read
        (None: read here). In a channel with approvals the whole job stays private until a reviewer approves."""
        if private is None:
            private = self.core.review_needed(actor_of(interaction))
        await interaction.response.defer(thinking=True, ephemeral=private)
        # from Discord creating the interaction to our answer (Discord allows 3 s)
        self.core.metrics.ack("discord", (discord.utils.utcnow() - interaction.created_at).total_seconds())

    async def _submit_job(self, interaction: discord.Interaction,
                          submit: Callable[[ReplyTo], Awaitable[Job]]) -> None:
        """After the ack (the public defer): the job itself; a refusal now withdraws the placeholder."""
        reply = ReplyTo("discord", str(interaction.channel_id), ReplyData.from_interaction(interaction).to_dict())
        try:
            await submit(reply)  # the core publishes Accepted: the front end edits the placeholder
        except ImagineError as error:
            await self._withdraw(interaction, error.user_message)
        except Exception:
            log.exception("could not start a job for interaction %s", interaction.id)
            await self._withdraw(interaction, ImagineError().user_message)

    async def _withdraw(self, interaction: discord.Interaction, text: str) -> None:
        """Refused after the public defer: remove the placeholder, tell only the requester."""
        try:
            await interaction.delete_original_response()
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as error:
            log.warning("could not tell %s why their job was refused: %s", interaction.user.id, error)

    # ------------------------------------------------------------------ information
    async def credits(self, interaction: discord.Interaction) -> None:
        info = self.core.credits(actor_of(interaction))
        await reply_private(interaction, messages.credits(info.balance, len(info.active), self.core.now(), info.budget))

    async def help(self, interaction: discord.Interaction) -> None:
        admin = self.core.is_admin(actor_of(interaction))
        await reply_private(interaction, messages.help_text(self.core.model, admin=admin, slash=True))

    # ------------------------------------------------------------------ approvals
    async def approve(self, interaction: discord.Interaction, job_id: str) -> None:
        """Approve, pressed in a review DM: the image goes to its channel (posted before we answer)."""
        await self._decide(interaction, job_id, approve=True)

    async def reject(self, interaction: discord.Interaction, job_id: str) -> None:
        """Reject: the form for the reason, unless the press would be refused anyway (then say why)."""
        try:
            self.core.check_can_decide(actor_of(interaction), job_id)
        except ImagineError as error:
            await reply_private(interaction, error.user_message)
            return
        await interaction.response.send_modal(reject_modal(job_id, messages.reject_reason_needed()))

    async def reject_submitted(self, interaction: discord.Interaction, custom_id: str) -> None:
        """The rejection form came back (from this process or an earlier one)."""
        match = REJECT_FORM.match(custom_id)
        if match is None:
            return
        data: dict[str, Any] = dict(interaction.data) if isinstance(interaction.data, dict) else {}
        await self._decide(interaction, match["job_id"], approve=False, reason=read_reason(data))

    async def _decide(self, interaction: discord.Interaction, job_id: str, *, approve: bool,
                      reason: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # a post in the channel may take a while
        try:
            text = await self.core.decide(actor_of(interaction), job_id, approve=approve, reason=reason)
        except ImagineError as error:
            text = error.user_message
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    # ------------------------------------------------------------------ brand presets
    def preset_names(self, interaction: discord.Interaction, typed: str) -> list[tuple[str, str]]:
        """Autocomplete choices (label, value): the presets here starting with ``typed``, then ``none``."""
        who = actor_of(interaction)
        typed = typed.strip().lower()
        default = self.core.channel_preset(who)
        choices = [(f"{p.name} (this channel's default)" if p.name == default else p.name, p.name)
                   for p in self.core.presets_here(who) if p.name.startswith(typed)]
        if "none".startswith(typed):
            choices.append(("none (no preset)", "none"))
        return choices[:25]

    # ------------------------------------------------------------------ admins
    async def admin(self, interaction: discord.Interaction, what: str, operation: admin.Operation) -> None:
        """An ``/imagine-admin`` subcommand: its typed options call the core's admin operation directly
        (``core.chat.admin``: one set of rules and words for every front end). The answer, and any CSV,
        only the admin sees."""
        answer = admin.run(self.core, actor_of(interaction), operation, what=what)
        file = None
        if answer.attachment is not None:
            name, content = answer.attachment
            file = discord.File(io.BytesIO(content), filename=name)
        await reply_private(interaction, answer.text, file=file)
