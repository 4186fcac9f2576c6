"""The words users read, written once for every front end.

Plain text with only backticks for markup, which Slack, Discord and a terminal all show well. Front ends
may add their own layout (blocks, embeds) around these texts but do not write their own wording.
Prompts are echoed through ``quote_prompt``; front ends still disable mentions on their side.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from imagine_bot.core.access.authority import scope_noun
from imagine_bot.core.chat.parsing import usage
from imagine_bot.core.credits.budgets import BudgetStatus
from imagine_bot.core.credits.ledger import Balance
from imagine_bot.core.credits.periods import describe_refill, period_name, refill_words
from imagine_bot.core.errors import ImagineError
from imagine_bot.core.gateway.catalog import ModelSpec
from imagine_bot.core.jobs.model import Job

STAGE_WORDS = {
    "submitted": "sent to the image service",
    "waiting": "waiting in the image service's queue",
    "generating": "generating",
}


def quote_prompt(prompt: str, limit: int = 300) -> str:
    """A prompt fit to echo: one line, shortened, backticks neutralised."""
    text = " ".join(prompt.split()).replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def describe_params(params: dict[str, object]) -> str:
    shown = [f"{k.replace('_', ' ')} {v}" for k, v in params.items() if k in ("aspect_ratio", "quality")]
    return ", ".join(shown)


def describe_job(job: Job) -> str:
    """The options of a job as its messages name them: ``preset brand, aspect ratio 16:9, quality basic``."""
    what = describe_params(job.params)
    return f"preset {job.preset}, {what}" if job.preset else what


def elapsed(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def accepted(job: Job) -> str:
    what = describe_job(job)
    if job.image_urls:
        count = len(job.image_urls)
        what = f"an edit of {count} reference image{'s' if count != 1 else ''}, {what}"
    price = ""
    if job.text_cost is not None and job.text_cost != job.cost:
        price = f" (an edit costs {job.cost} credits; text-to-image costs {job.text_cost})"
    return f"Got it: `{quote_prompt(job.prompt, 120)}` ({what}). {job.cost} credits reserved{price}."


# ---------------------------------------------------------------------- reference images
def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


def reference_count(count: int, low: int, high: int) -> str:
    return (f"You gave {count} reference image{'s' if count != 1 else ''}; an edit takes {low} to {high}. "
            "Nothing was charged.")


def reference_not_image(name: str, head: bytes) -> str:
    kind = "not an image"
    if head.startswith((b"GIF87a", b"GIF89a")):
        kind = "a GIF"
    elif head and all(32 <= b < 127 or b in b"\r\n\t" for b in head[:256]):
        kind = "text"
    return f"`{quote_prompt(name, 80)}` is {kind}, not a JPEG, PNG or WebP image."


def reference_too_large(name: str, size: int, limit: int, *, shrinkable: bool) -> str:
    why = ("and I could not make it smaller" if shrinkable else
           "and I can only shrink images when this bot's PUBLIC_URL is set")
    return f"`{quote_prompt(name, 80)}` is {_mb(size)}; the limit is {_mb(limit)}, {why}."


def reference_unreachable(name: str, why: str) -> str:
    return f"I could not fetch `{quote_prompt(name, 80)}` ({why})."


def reference_not_public(name: str) -> str:
    """The one answer for a URL, or any redirect hop of it, that is not a public address (private, loopback,
    link-local, or a name that does not resolve): the same words whatever is there."""
    return reference_unreachable(name, "not a public address")


def reference_too_many_pixels(name: str, size: tuple[int, int], limit: int) -> str:
    width, height = size
    return (f"`{quote_prompt(name, 80)}` is {width:,}×{height:,} pixels ({width * height / 1e6:.0f} megapixels); "
            f"I can shrink images of up to {limit / 1e6:.0f} megapixels.")


def reference_gone() -> str:
    return ("That image is no longer kept (results are kept for a limited time), so it cannot be used "
            "again. Nothing was charged.")


def references_refused(problems: list[str]) -> str:
    return "I can't use " + ("this image: " if len(problems) == 1 else "these images: ") + " ".join(
        problems) + " Nothing was charged."


def same_shape_hint() -> str:
    """Under a Remix form's aspect ratio, when none is preselected: an edit keeps its image's shape."""
    return "Leave empty to keep the image's shape"


def no_images_to_remix() -> str:
    return "That message has no image I can remix (JPEG, PNG or WebP). Nothing was charged."


def refs_need_public_url() -> str:
    return ("This image must be served from the bot's own web server for the image service to fetch it, "
            "and PUBLIC_URL is not set. An admin must set PUBLIC_URL (see the README). Nothing was charged.")


def not_installed(install_url: str) -> str:
    """The answer to a request from a workspace the bot is not installed in (never was, or was removed)."""
    return (f"The image bot is not installed in this workspace, or it was removed. A workspace admin can add it "
            f"at {install_url}. Nothing was charged.")


def queued(job: Job, position: int) -> str:
    ahead = position - 1
    who = "you are next" if ahead == 0 else f"{ahead} ahead of you"
    return f"Queued: place {position} ({who})."


def progress(job: Job, stage: str, elapsed_s: float, percent: int | None = None) -> str:
    words = STAGE_WORDS.get(stage, stage)
    pct = f" {percent}%" if percent is not None else ""
    return f"Working on it: {words}{pct} ({elapsed(elapsed_s)})."


def delivered(job: Job, balance: int) -> str:
    return (
        f"`{quote_prompt(job.prompt)}`\n{describe_job(job)} · {job.cost} credits"
        f" · {balance} left · {elapsed(job.elapsed_s)}"
    )


def failed(job: Job, error: ImagineError, refunded: bool) -> str:
    text = error.user_message
    if refunded and "refund" not in text and "nothing was charged" not in text.lower():
        text += " Your credits were refunded."
    return f"Could not make `{quote_prompt(job.prompt, 120)}`: {text}"


# ---------------------------------------------------------------------- where the bot can answer
#: why a front end cannot answer where it was asked: a channel it is not in, an archived one, a direct
#: message between other people
Unanswerable = Literal["not_member", "archived", "others_dm"]


def cannot_answer_here(why: Unanswerable, bot_name: str) -> str:
    """Said privately, before anything is reserved or sent, when the bot cannot post where it was asked."""
    invite = f"`/invite @{bot_name}`"
    if why == "archived":
        text = (f"This channel is archived, so I can't post an image in it. Ask in a channel I'm in "
                f"(type {invite} in a channel to add me).")
    elif why == "others_dm":
        text = (f"I can't post in a direct message between other people. Ask in your direct messages with me, "
                f"or in a channel: type {invite} there first.")
    else:
        text = (f"I'm not a member of this channel, so I can't post an image here. Type {invite} in the "
                "channel, then try again.")
    return f"{text} Nothing was charged."


def delivered_elsewhere(channel: str) -> str:
    """The note on a result sent by direct message because the channel refused it after the job was sent."""
    return (f"I can no longer post in <#{channel}> (I was removed from it, or it was archived), "
            "so here is your image.")


def undeliverable() -> str:
    return "I made the image but could post it neither where you asked nor in a direct message to you."


def credits(balance: Balance, active: int, now: datetime, budget: BudgetStatus | None = None) -> str:
    refill = describe_refill(balance.next_refill, now)
    lines = [f"You have {balance.available} credits"
             + (f" ({balance.held} reserved for images in progress)" if balance.held else "") + "."]
    if refill:
        lines.append(f"Your allowance of {balance.allowance} refills {refill}.")
    else:
        lines.append("Your allowance does not refill; an admin can grant more.")
    lines.append(f"Images in progress: {active}.")
    if budget is not None and budget.remaining is not None:
        lines.append(budget_left(budget))
    return " ".join(lines)


def budget_left(budget: BudgetStatus) -> str:
    """``This server has 864 of 900 image credits left for November.``"""
    when = period_name(budget.period, budget.period_start)
    if budget.remaining is None:
        return f"This {scope_noun(budget.scope)}'s image budget is unlimited."
    return (f"This {scope_noun(budget.scope)} has {budget.remaining} of {budget.amount} image credits left"
            + (f" {when}" if when else "") + ".")


def budget_line(budget: BudgetStatus) -> str:
    """One budget for admins: scope, amount, spent, held, member cap, next reset."""
    amount = "unlimited" if budget.amount is None else f"{budget.amount}"
    default = " (default)" if budget.default else ""
    cap = f", at most {budget.member_cap} per member" if budget.member_cap is not None else ""
    refill = refill_words(budget.period, budget.next_reset).replace("it refills", "resets")
    return (f"`{budget.scope}`: {amount}{default} per {budget.period}, {budget.spent} spent, {budget.held} reserved"
            f"{cap}; {refill}.")


def scope_summary(budget: BudgetStatus, rows: list[dict[str, Any]]) -> str:
    """A place's spend this period for its admins: totals, then per member and per channel."""
    noun = scope_noun(budget.scope)
    when = period_name(budget.period, budget.period_start) or "so far"
    of = f" of {budget.amount}" if budget.amount is not None else ""
    total = sum(int(r["credits_spent"]) for r in rows)
    lines = [f"This {noun} spent {total}{of} credits {when}."]
    if not rows:
        return lines[0]
    members: dict[str, list[int]] = {}
    channels: dict[str, int] = {}
    for row in rows:
        spent = members.setdefault(str(row["account"]), [0, 0])
        spent[0] += int(row["credits_spent"])
        spent[1] += int(row["images"])
        if row["channel"]:
            channels[str(row["channel"])] = channels.get(str(row["channel"]), 0) + int(row["credits_spent"])
    lines.append("By member: " + ", ".join(
        f"{mention(account)} {spent} ({images} image{'s' if images != 1 else ''})"
        for account, (spent, images) in sorted(members.items(), key=lambda kv: -kv[1][0])))
    if channels:
        ranked = sorted(channels.items(), key=lambda kv: -kv[1])
        lines.append("By channel: " + ", ".join(f"<#{c}> {n}" for c, n in ranked))
    return "\n".join(lines)


def mention(account: str) -> str:
    """``<@USER>`` for an account key (Slack and Discord both show it as the user)."""
    return f"<@{account.rsplit(':', 1)[-1]}>"


def help_text(model: ModelSpec, *, command: str = "/imagine", admin: bool = False, slash: bool = False) -> str:
    """How to use the bot. ``slash``: the platform has separate app commands (Discord) instead of the
    ``/imagine credits`` / ``/imagine admin ...`` text subcommands (Slack, terminal)."""
    lines = [
        f"{command} <prompt> makes an image with {model.label} for {model.cost} credits,"
        " charged only when the image arrives.",
        usage(model).replace("/imagine", command),
        f"Example: {command} a lighthouse at dusk --ar 16:9 --quality high",
    ]
    if slash:
        lines.append("The aspect_ratio and quality options work too (a flag typed in the prompt wins). "
                     "Attach up to four images (image..image4) to edit them, or use Remix with imagine on a "
                     "message with images; the preset option picks a brand preset. /credits shows your balance; "
                     "/help shows this. Every image has Reroll, Vary, Remix and Delete buttons.")
        if admin:
            lines.append("Server admins: /imagine-admin ban|unban @user · channels · defaults · member-cap · "
                         "budget · report · preset set|list|remove|default. "
                         "Operators also: /imagine-admin grant @user 90 (negative to revoke) · "
                         "allowance @user 360 · budget with credits")
        return "\n".join(lines)
    lines.append(f"Add --image <url> (up to 14) to edit images, --preset <name> to use a brand preset "
                 f"(--preset none: not even the channel's default). {command} credits shows your balance; "
                 f"{command} help shows this.")
    if admin:
        lines.append(
            f"Workspace admins: {command} admin ban|unban @user · admin channels here|all · "
            f"admin defaults --ar 16:9 --quality high · admin member-cap 90|none · admin budget · admin report · "
            f"admin preset set brand \"{{prompt}}, our house style\" --ar 16:9 · admin preset list|remove|default. "
            f"Operators also: {command} admin grant @user 90 (negative to revoke) · "
            f"admin allowance @user 360 (or `default`) · admin budget set here 900 --period month · admin report all"
        )
    return "\n".join(lines)


#: words that are commands when they come first: never the start of a paid prompt
COMMAND_WORDS = ("admin", "credits", "balance", "help")


def command_word_usage(words: list[str], *, command: str = "/imagine", admin: bool = False) -> str:
    """A reserved word first but not a command we know (``admin grnt``, ``credits please``): say how to
    use it, and how to start a prompt with that word, instead of making a paid image of it."""
    word = words[0].lower()
    said = " ".join(words[:3])[:60]
    if word == "admin":
        what = (f"`{command} {said}` is not an admin command. Try `{command} help` for the list."
                if admin else "Admin commands are for the image bot's admins.")
    else:
        shows = "your balance" if word in ("credits", "balance") else "the help"
        what = f"`{command} {word}` on its own shows {shows}; it takes nothing after it."
    return (f"{what} Nothing was made or charged. To make an image whose prompt starts with \"{word}\", "
            f"put another word first, e.g. `{command} a {word} ...`.")


def granted(target: str, amount: int, balance: Balance) -> str:
    verb = "Granted" if amount >= 0 else "Revoked"
    direction = "to" if amount >= 0 else "from"
    return f"{verb} {abs(amount)} credits {direction} {target}; they now have {balance.available}."


def allowance_set(target: str, balance: Balance) -> str:
    return f"The allowance of {target} is now {balance.allowance} credits a {balance.period}" + (
        "." if balance.period != "never" else " (no automatic refill)."
    )


def deleted() -> str:
    return "Deleted."


def dashboard_link(url: str, scope: str | None) -> str:
    where = "every server and workspace" if scope is None else f"`{scope}` only"
    return (f"Your dashboard link ({where}): {url}\nIt works once, within 10 minutes, and only for you: "
            "do not share it.")


# ---------------------------------------------------------------------- brand presets
def preset_bad_name(raw: str) -> str:
    return (f"`{quote_prompt(raw, 40)}` is not a preset name. A preset name is one short word: letters, digits, "
            "`-` or `_`, up to 24 characters (and not `none`), like `brand` or `launch-2025`. Nothing was changed.")


def preset_no_slot() -> str:
    return ("A preset's template needs `{prompt}` where the user's words go, like "
            "`\"{prompt}, studio light, our brand colours\"`. Nothing was changed.")


def preset_template_too_long(fixed: int, limit: int) -> str:
    return (f"This template is {fixed} characters without the user's words; the image service takes at most "
            f"{limit} in all, so no prompt would fit. Shorten it. Nothing was changed.")


def preset_prompt_too_long(name: str, length: int, limit: int, room: int) -> str:
    return (f"With the preset `{name}` the prompt is {length} characters; the image service takes at most {limit}. "
            f"Keep your words to {room} characters. Nothing was charged.")


def unknown_preset(name: str, names: list[str]) -> str:
    known = ", ".join(f"`{n}`" for n in names)
    there = f"The presets here are {known}." if names else "There are no presets here yet."
    return f"There is no preset `{quote_prompt(name, 40)}` here. {there} Nothing was charged."


def preset_line(name: str, template: str, params: dict[str, object], images: int, scope: str,
                default_in: list[str]) -> str:
    """One preset in ``admin preset list``."""
    extra = [describe_params(params)] if params else []
    if images:
        extra.append(f"{images} reference image{'s' if images != 1 else ''}")
    if scope == "global":
        extra.append("global")
    if default_in:
        extra.append("default in " + ", ".join(f"<#{c}>" for c in default_in))
    return f"`{name}`: `{quote_prompt(template, 200)}`" + (f" ({'; '.join(extra)})" if extra else "")


def preset_saved(name: str, scope: str) -> str:
    where = "every server and workspace" if scope == "global" else f"this {scope_noun(scope)}"
    return (f"Preset `{name}` saved for {where}. Use it with `/imagine --preset {name} <prompt>`, or make it a "
            f"channel's default with `admin preset default {name}` there.")


def preset_removed(name: str, channels: list[str]) -> str:
    where = (" It was the default in " + ", ".join(f"<#{c}>" for c in channels) + ", which now have none."
             if channels else "")
    return f"Preset `{name}` removed.{where}"


def preset_default_set(name: str | None) -> str:
    if name is None:
        return "This channel has no default preset now."
    return (f"Every /imagine in this channel now uses the preset `{name}`, unless the user adds "
            "`--preset none` (or names another preset).")


# ---------------------------------------------------------------------- approvals
def _who(keys: tuple[str, ...] | list[str], joiner: str = "or") -> str:
    names = [mention(k) for k in keys]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {joiner} " + names[-1]


def approvals_set(reviewers: tuple[str, ...], hours: float) -> str:
    if not reviewers:
        return "Approvals are off in this channel: images are posted here as soon as they are made."
    who = "one of them approves" if len(reviewers) > 1 else "they approve"
    return (f"Approvals are on in this channel: an image made here is shown to its requester and sent to "
            f"{_who(reviewers, 'and')} first, and posted here only once {who} it (or never, if nobody decides "
            f"within {hours:g} hours).")


def review_coming(job: Job) -> str:
    """What the requester is told when the job is accepted in a channel with approvals."""
    return accepted(job) + " This channel has approvals: you will see the image first, then it goes to review."


def sent_for_review(job: Job, channel: str) -> str:
    return (f"Sent for review: it will be posted in <#{channel}> once {_who(job.review)} approves it. "
            f"You were charged when it was made: the image is yours either way.")


def review_request(job: Job, channel: str, hours: float) -> str:
    """The reviewer's DM, above the image and the Approve and Reject buttons."""
    return (f"{mention(job.requester.key)} asked for this image in <#{channel}>:\n`{quote_prompt(job.prompt)}`\n"
            f"{describe_job(job)} · {job.cost} credits\nWithout a decision it expires in {hours:g} hours.")


def approved_by(reviewer: str) -> str:
    return f"approved by {mention(reviewer)}"


def approved_caption(job: Job, balance: int, reviewer: str) -> str:
    return delivered(job, balance) + "\n" + approved_by(reviewer)


def review_buttons_text(channel: str) -> str:
    """Beside the reviewer's Approve and Reject buttons."""
    return f"Approve it to post it in <#{channel}>, or reject it with a reason."


def review_approved(channel: str, *, own: bool = False) -> str:
    first = "You are the only reviewer here, so you may approve your own image. " if own else ""
    return f"{first}Approved: it is posted in <#{channel}>."


def review_approved_soon(channel: str, *, own: bool = False) -> str:
    first = "You are the only reviewer here, so you may approve your own image. " if own else ""
    return f"{first}Approved: it will be posted in <#{channel}> in a moment."


def review_approved_not_posted(channel: str, problem: str) -> str:
    return f"Approved, but it is not posted in <#{channel}> yet. {problem}"


def review_retrying() -> str:
    return "The chat service did not answer; I will try again in a minute."


def review_refused() -> str:
    return "The chat service refused the post; press Approve again to try once more."


def review_rejected(requester: str, *, own: bool = False) -> str:
    first = "You are the only reviewer here, so you may reject your own image. " if own else ""
    return f"{first}Rejected: {mention(requester)} has been told why. The channel sees nothing."


def review_decided(state: str, by: str | None, reason: str | None, when: datetime | None) -> str:
    at = f" on {when:%Y-%m-%d at %H:%M} UTC" if when else ""
    if state == "expired":
        return f"This review expired{at}: nobody decided in time, and it was not posted."
    what = f"{state} by {mention(by)}" if by else state
    because = f" ({quote_prompt(reason, 200)})" if reason else ""
    return f"This image was already {what}{at}{because}. The first decision counts."


def review_cannot_post(channel: str) -> str:
    return (f"I cannot post in <#{channel}>: make sure I am in that channel and may post there (in Slack, "
            "`/invite` me), then press Approve again.")


def review_own_image() -> str:
    return ("You asked for this image, so you cannot approve or reject it yourself: another reviewer of this "
            "channel decides.")


def review_not_reviewer(channel: str) -> str:
    return f"Only the reviewers of <#{channel}> (or the bot's operators) can approve or reject this image."


def review_gone() -> str:
    return "I no longer know this review."


def review_rejected_to_requester(job: Job, channel: str, reviewer: str, reason: str) -> str:
    return (f"{mention(reviewer)} rejected your image `{quote_prompt(job.prompt, 120)}` for <#{channel}>: "
            f"{quote_prompt(reason, 500)}. It was not posted there.")


def review_expired_to_requester(job: Job, channel: str, hours: float) -> str:
    return (f"Nobody reviewed your image `{quote_prompt(job.prompt, 120)}` for <#{channel}> within {hours:g} "
            "hours, so it was not posted there.")


def reject_reason_needed() -> str:
    return "Say why, so the requester knows what to change."


# ---------------------------------------------------------------------- to the operators (DMs)
def operator_paused(detail: str) -> str:
    return ("imagine-bot: new images are paused because the ModKie account is out of credits "
            f"({detail}). Users are told to try later; nothing is charged. Top up the ModKie account: "
            "the bot resumes by itself within a minute of the balance covering an image.")


def operator_resumed(balance: int) -> str:
    return f"imagine-bot: the ModKie account has {balance} credits again; new images are being made."


def operator_gateway_error(code: str, detail: str) -> str:
    what = {"gateway_auth": "refused the API key (401): check MODKIE_API_KEY",
            "gateway_feature_disabled": "says this model is not enabled for the account (505)"}.get(code, code)
    return (f"imagine-bot: the image service {what}. Jobs fail and are refunded until it is fixed. "
            f"Detail: {detail[:300]}")


def _images(n: int) -> str:
    return f"{n} image{'' if n == 1 else 's'}"


def operator_undelivered(credits: int, jobs: int, threshold: int) -> str:
    return (f"imagine-bot: today the image service charged the ModKie account {credits} credits for "
            f"{_images(jobs)} that were never delivered (the gateway finished them, then posting failed; "
            f"their users were refunded). This passes UNDELIVERED_ALERT_CREDITS ({threshold}); you are told "
            "once a day. `imagine-bot jobs list --state failed` shows why they failed; the dashboard's usage "
            "page has the day by day reconciliation.")


def billed_not_delivered_line(total: tuple[int, int], today: tuple[int, int]) -> str:
    """``credits report``: what the gateway billed for images nobody received, in all and today (UTC)."""
    return (f"Billed but not delivered: {total[0]} credits ({_images(total[1])}) in all, {today[0]} credits "
            f"({_images(today[1])}) today: the gateway charged for them, their users were refunded.")
