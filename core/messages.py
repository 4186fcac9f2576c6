"""The words users read, written once for every front end.

Plain text with only backticks for markup, which Slack, Discord and a terminal all show well. Front ends
may add their own layout (blocks, embeds) around these texts but do not write their own wording.
Prompts are echoed through ``quote_prompt``; front ends still disable mentions on their side.
"""

from __future__ import annotations

from datetime import datetime

from .catalog import ModelSpec
from .errors import ImagineError
from .jobs import Job
from .ledger import Balance, describe_refill
from .parsing import usage

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


def elapsed(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def accepted(job: Job) -> str:
    return f"Got it: `{quote_prompt(job.prompt, 120)}` ({describe_params(job.params)}). {job.cost} credits reserved."


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
        f"`{quote_prompt(job.prompt)}`\n{describe_params(job.params)} · {job.cost} credits"
        f" · {balance} left · {elapsed(job.elapsed_s)}"
    )


def failed(job: Job, error: ImagineError, refunded: bool) -> str:
    text = error.user_message
    if refunded and "refund" not in text and "nothing was charged" not in text.lower():
        text += " Your credits were refunded."
    return f"Could not make `{quote_prompt(job.prompt, 120)}`: {text}"


def credits(balance: Balance, active: int, now: datetime) -> str:
    refill = describe_refill(balance.next_refill, now)
    lines = [f"You have {balance.available} credits"
             + (f" ({balance.held} reserved for images in progress)" if balance.held else "") + "."]
    if refill:
        lines.append(f"Your allowance of {balance.allowance} refills {refill}.")
    else:
        lines.append("Your allowance does not refill; an admin can grant more.")
    lines.append(f"Images in progress: {active}.")
    return " ".join(lines)


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
                     "/credits shows your balance; /help shows this. Every image has Reroll and Delete buttons.")
        if admin:
            lines.append("Admins: /imagine-admin grant @user 90 (negative to revoke) · "
                         "/imagine-admin allowance @user 360 (leave credits empty for the default) · "
                         "/imagine-admin report")
        return "\n".join(lines)
    lines.append(f"{command} credits shows your balance; {command} help shows this.")
    if admin:
        lines.append(
            f"Admins: {command} admin grant @user 90 (negative to revoke) · "
            f"{command} admin allowance @user 360 (or `default`) · {command} admin report"
        )
    return "\n".join(lines)


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
