"""One error hierarchy for imagine-bot.

Every error carries two texts: ``user_message``, plain words fit for a chat channel, and
``admin_message``, the detail for logs and admins. Front ends show ``user_message`` and nothing else;
neither text ever contains the API key or a platform token.

    ImagineError
    ├── ConfigError                 a setting is missing or wrong (fails at start, one line)
    │   └── DataNotWritable         the database's folder cannot be written (a root-owned /data mount)
    ├── UserInputError              a malformed flag, unknown value, empty or refused prompt
    │   └── NumberRefused           a typed number that is not a whole number in its range (or too long)
    ├── PermissionDenied            an admin command from a non-admin
    ├── InsufficientCredits         the balance does not cover the job
    ├── BudgetExhausted             a server, workspace, channel or the global budget does not cover it
    ├── NotAllowedHere              banned in this server, a channel the bot does not answer in, ...
    ├── CannotAnswerHere            the front end cannot post where it was asked (not in that channel, ...)
    ├── GatewayPaused               new jobs wait: the gateway account is out of credits (or refused the key)
    ├── TooManyActiveJobs           the per-user limit of jobs in flight
    ├── NotFound                    an unknown job or account
    ├── DeliveryError               the chat platform refused the result (bot not in channel, ...)
    │   ├── DeliveryInterrupted     a chat-API blip while posting: posted again, with the same receipt
    │   └── AppRemoved              the workspace removed the app: nobody can be told, nothing is posted
    ├── ChatRateLimited             a chat platform said 429 to a status edit (carries retry_after)
    ├── JobInterrupted              a restart hit a moment whose outcome cannot be known
    ├── JobFailedByOperator         ``imagine-bot jobs fail`` or a stranded job past JOB_TIMEOUT_S
    ├── ShuttingDown                the process is draining (SIGTERM): new commands are refused
    ├── CaptureRefused              the ledger refused to charge a delivered job (a bug: logged loudly)
    ├── LeaseLost                   another process owns the job now: the local worker stops quietly
    ├── DatabaseBusy                another process held the write lock past the busy timeout (try again)
    ├── ReviewClosed                an approval already decided (or expired): says by whom and when
    └── GatewayError                anything from the image gateway
        ├── GatewayAuthError        401: bad or missing key
        ├── GatewayOutOfCredits     402 / 433: the gateway account or key is out of credits
        ├── GatewayInvalidInput     400 / 422: the gateway refused the input
        ├── GatewayRateLimited      429: rate limited (carries retry_after)
        ├── GatewayMaintenance      455: maintenance
        ├── GatewayServerError      5xx: server error
        ├── GatewayFeatureDisabled  505: feature disabled for this account or model
        ├── GenerationFailed        501 or a ``fail`` state
        ├── GatewayTimeout          408, a hung request, or the job ran past JOB_TIMEOUT_S
        ├── UnknownTask             404 / "recordInfo is null" past the grace period
        ├── GatewayProtocolError    an answer we cannot read (bad JSON, bad resultJson)
        └── DownloadError           a result URL that fails, is too large or is not an image

One predicate decides "try again later": ``is_transient(error)`` (the ``retryable`` flag). Transport
trouble (timeouts, refused connections), 5xx, 429, 455, a 401 (a key rotation in progress) and an answer
we cannot read are transient; a ``fail`` state, 501, an envelope 408, bad input and an unknown task are
not. Only idempotent calls (recordInfo, downloads, balance) are repeated on it; createTask never is, unless
its request never left (``GatewayError.unsent``: the connection never opened). A chat-API blip while posting
(``DeliveryInterrupted``) and a busy database (``DatabaseBusy``) are transient too.
"""

from __future__ import annotations


class ImagineError(Exception):
    """Root of every error imagine-bot raises on purpose."""

    #: short machine-readable cause, stored on failed job rows
    code: str = "error"
    #: default plain-words text for chat users
    default_user_message: str = "Something went wrong. Nothing was charged."
    #: can the same operation be tried again later with a chance of success?
    retryable: bool = False

    def __init__(self, admin_message: str | None = None, *, user_message: str | None = None) -> None:
        self.user_message = user_message or self.default_user_message
        self.admin_message = admin_message or self.user_message
        super().__init__(self.admin_message)


class ConfigError(ImagineError):
    code = "config"
    default_user_message = "The image bot is not configured correctly. An admin has been told."

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {problem}")


class DataNotWritable(ConfigError):
    """The database (or its folder) cannot be created or written by the user the bot runs as."""

    def __init__(self, path: str, folder: str, reason: str, uid: int) -> None:
        self.path = path
        super().__init__(
            "IMAGINE_DB_PATH",
            f"cannot write the database {path} ({reason}). The folder {folder} must be writable by uid {uid}, "
            f"the user the bot runs as: on the host run `sudo chown -R {uid} <the folder mounted at {folder}>`, "
            "or set IMAGINE_DATA_DIR / IMAGINE_DB_PATH to a writable place",
        )


class UserInputError(ImagineError):
    """Bad input from a chat user. ``user_message`` says what is valid."""

    code = "invalid_input"

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message, user_message=user_message)


class NumberRefused(UserInputError):
    """A number a user typed (credits, a limit, a port) that is not a whole number from ``low`` to ``high``,
    or is too long to read at all: refused in one line, before ``int()`` ever sees a huge token."""

    code = "invalid_number"

    def __init__(self, raw: str, label: str, low: int, high: int) -> None:
        shown = " ".join(raw.split())
        shown = shown if len(shown) <= 20 else shown[:20] + "…"
        super().__init__(f"{label}: `{shown}` is not a whole number from {low:,} to {high:,}.")


class PermissionDenied(ImagineError):
    code = "permission_denied"
    default_user_message = "Sorry, only image-bot admins can do that. Nothing was changed."


class NotFound(ImagineError):
    code = "not_found"
    default_user_message = "I could not find that."


class InsufficientCredits(ImagineError):
    code = "insufficient_credits"

    def __init__(self, *, balance: int, cost: int, next_refill: str | None) -> None:
        self.balance = balance
        self.cost = cost
        self.next_refill = next_refill
        refill = f" Your allowance refills {next_refill}." if next_refill else ""
        msg = (
            f"Not enough credits: this image costs {cost} and you have {balance}.{refill}"
            " An admin can grant you more. Nothing was charged."
        )
        super().__init__(msg, user_message=msg)


class BudgetExhausted(ImagineError):
    """A budget above the user (``core.credits.budgets``) cannot cover the job. Names the limit that stopped it."""

    code = "budget_exhausted"

    def __init__(self, *, scope: str, noun: str, remaining: int, cost: int, period: str, refill: str,
                 member_cap: int | None = None) -> None:
        self.scope = scope
        self.remaining = remaining
        self.cost = cost
        when = f" {period}" if period else ""
        if member_cap is not None:
            msg = (f"You have used your share of this {noun}'s image budget{when} ({member_cap} credits a member);"
                   f" {refill}. Nothing was charged.")
        else:
            left = f" ({remaining} credits left, an image costs {cost})" if remaining else ""
            msg = f"This {noun}'s image budget{when} is used up{left}; {refill}. Nothing was charged."
        super().__init__(f"{scope}: {msg}", user_message=msg)


class NotAllowedHere(ImagineError):
    code = "not_allowed_here"
    default_user_message = "The image bot is not available to you here."


class CannotAnswerHere(ImagineError):
    """The front end cannot post where the command was given (the bot is not a member of that channel, the
    channel is archived, a direct message between other people): refused before anything is reserved or
    sent to the gateway. The front end words ``user_message`` with ``messages.cannot_answer_here``."""

    code = "cannot_answer_here"
    default_user_message = "I can't post here. Nothing was charged."


class GatewayPaused(ImagineError):
    code = "gateway_paused"
    default_user_message = (
        "Image making is paused: the image service account needs attention. The operators have been told;"
        " please try again later. Nothing was charged."
    )


class TooManyActiveJobs(ImagineError):
    code = "too_many_active_jobs"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        msg = (
            f"You already have {limit} image{'s' if limit != 1 else ''} in progress. "
            "Please wait for one to finish. Nothing was charged."
        )
        super().__init__(msg, user_message=msg)


class DeliveryError(ImagineError):
    code = "delivery_failed"
    default_user_message = "I made the image but could not post it here. Your credits were refunded."


class DeliveryInterrupted(DeliveryError):
    """A chat-API blip while posting the result (5xx, rate limit, timeout, a dropped connection): the
    orchestrator posts again, with the same receipt, for up to ``DELIVERY_RETRY_S`` before it refunds."""

    retryable = True


class AppRemoved(DeliveryError):
    """The workspace (or organisation) the job belongs to removed the app, or its token was revoked: the
    job ends refunded and nothing is posted (there is no token left to post with, nor anyone to tell)."""

    code = "app_removed"
    default_user_message = "The image bot was removed from this workspace, so I could not post the image."


class JobInterrupted(ImagineError):
    code = "interrupted"
    default_user_message = (
        "The bot restarted while sending your request to the image service, so I cannot tell whether it "
        "started. Your credits were refunded; please try again."
    )


class JobFailedByOperator(ImagineError):
    code = "failed_by_operator"
    default_user_message = (
        "Your image could not be finished (the bot was not running for it), so it was stopped. "
        "Your credits were refunded; please try again."
    )


class ShuttingDown(ImagineError):
    code = "restarting"
    retryable = True
    default_user_message = "The bot is restarting; please try again in a moment. Nothing was charged."


class CaptureRefused(ImagineError):
    """The ledger would not charge a job that was just delivered (already settled): never "delivered"."""

    code = "capture_refused"


class LeaseLost(ImagineError):
    """Not a failure of the job: another process took it over (or moved it on). Never shown to users;
    the local worker stops without touching money or telling anyone."""

    code = "lease_lost"


class DatabaseBusy(ImagineError):
    """A write waited ``DB_BUSY_TIMEOUT_S`` for the write lock another process holds (an admin command, a
    long report): nothing was written; the same write may be tried again later."""

    code = "database_busy"
    retryable = True
    default_user_message = "The bot is very busy right now; please try again in a moment. Nothing was charged."


class ReviewClosed(ImagineError):
    """A press on Approve or Reject of an image already decided or expired: the message says what happened."""

    code = "review_closed"

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message, user_message=user_message)


class GatewayError(ImagineError):
    code = "gateway_error"
    default_user_message = "The image service had a problem. Your credits were refunded; please try again."
    #: the request never left: its connection never opened, so the gateway saw nothing (and bills nothing)
    unsent: bool = False

    def __init__(
        self,
        admin_message: str | None = None,
        *,
        user_message: str | None = None,
        status: int | None = None,
        gateway_code: int | None = None,
    ) -> None:
        self.status = status
        self.gateway_code = gateway_code
        super().__init__(admin_message, user_message=user_message)


class GatewayAuthError(GatewayError):
    code = "gateway_auth"
    retryable = True  # a 401 on a lookup is most often a key rotation in progress
    default_user_message = "The image service is not configured. An admin has been told; nothing was charged."


class GatewayOutOfCredits(GatewayError):
    code = "gateway_out_of_credits"
    default_user_message = (
        "The team's image budget is used up for now. An admin has been told; nothing was charged."
    )


class GatewayInvalidInput(GatewayError):
    code = "gateway_invalid_input"
    default_user_message = "The image service refused this request. Try rewording the prompt; nothing was charged."


class GatewayRateLimited(GatewayError):
    code = "gateway_rate_limited"
    retryable = True
    default_user_message = "The image service is busy right now. Please try again in a minute; nothing was charged."

    def __init__(self, admin_message: str | None = None, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(admin_message, **kw)  # type: ignore[arg-type]


class GatewayMaintenance(GatewayError):
    code = "gateway_maintenance"
    retryable = True
    default_user_message = (
        "The image service is down for maintenance. Please try again later; nothing was charged."
    )


class GatewayServerError(GatewayError):
    code = "gateway_server_error"
    retryable = True


class GatewayFeatureDisabled(GatewayError):
    code = "gateway_feature_disabled"
    default_user_message = (
        "This model is not enabled on the image service account. An admin has been told; nothing was charged."
    )


class GenerationFailed(GatewayError):
    code = "generation_failed"
    default_user_message = (
        "The image service could not make this image. Your credits were refunded; try rewording the prompt."
    )


class GatewayTimeout(GatewayError):
    code = "timed_out"
    default_user_message = "The image took too long and was cancelled. Your credits were refunded."

    def __init__(self, admin_message: str | None = None, *, transport: bool = False, **kw: object) -> None:
        #: a request that timed out on the wire may be tried again; an envelope 408 or JOB_TIMEOUT_S may not
        self.retryable = transport
        super().__init__(admin_message, **kw)  # type: ignore[arg-type]


class UnknownTask(GatewayError):
    code = "unknown_task"
    default_user_message = "The image service lost track of this image. Your credits were refunded."


class GatewayProtocolError(GatewayError):
    code = "gateway_protocol"
    retryable = True  # a garbled answer to a lookup: ask again
    default_user_message = "The image service sent an answer I could not read. Your credits were refunded."


class DownloadError(GatewayError):
    code = "download_failed"
    default_user_message = "The image was made but I could not fetch it. Your credits were refunded."


class ChatRateLimited(ImagineError):
    """A chat platform answered 429: the outbox waits ``retry_after`` seconds before sending again.

    Raised by a front end's status edit (never by a delivery, which the platform SDK retries itself).
    """

    code = "chat_rate_limited"
    retryable = True

    def __init__(self, retry_after: float, admin_message: str | None = None) -> None:
        self.retry_after = max(0.0, retry_after)
        super().__init__(admin_message or f"chat API rate limited; retry after {self.retry_after:.1f}s")


def is_transient(error: BaseException) -> bool:
    """The one answer to "may this idempotent request be tried again later?" (see the module docstring)."""
    return isinstance(error, ImagineError) and error.retryable
