"""Reference images served to the gateway: ``PUBLIC_URL/refs/<token>``.

The gateway fetches every ``image_urls`` entry itself, so an image only we hold (a Slack file, a local
file, one of our own results) must be reachable at a public URL while its job runs. This store keeps such
images on disk and hands out signed, expiring, unguessable URLs for them:

- a **key** names one image: ``up:<32 hex>`` (an upload, in the refs folder) or ``job:<job id>:<n>`` (a
  result in the spool, kept for the Vary and Remix buttons);
- a **token** is ``<base64url(key)>.<expiry, epoch s>.<base64url(HMAC-SHA256(secret, key|expiry))>``; the
  secret is made once and kept in the database, so every process on it signs alike and restarts keep
  old URLs valid until they expire (``ttl_s``, one hour);
- ``open`` checks a token and returns the file; a bad signature, an expired token or anything but a key
  above is refused. Nothing else is served from ``/refs/``.

Jobs store keys (``ref:<key>`` in their ``image_urls``), never URLs: the URL is signed when createTask is
sent, so a job that waited in the queue still hands the gateway a fresh hour.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imagine_bot.core.chat import messages
from imagine_bot.core.errors import ImagineError, NotFound, UserInputError
from imagine_bot.core.media.imaging import sniff

log = logging.getLogger(__name__)

#: the prefix of a stored reference in a job's ``image_urls``
REF_PREFIX = "ref:"
_UPLOAD = re.compile(r"^up:([0-9a-f]{32})$")
_RESULT = re.compile(r"^job:(j[0-9a-f]{4,32}):(\d{1,2})$")
_SIG_BYTES = 24
#: a token is far shorter than this (a key, an expiry, 32 characters of signature); longer is refused unread
_TOKEN_MAX_CHARS = 200
_EXPIRES = re.compile(r"^[0-9]{1,12}$")


class RefRefused(ImagineError):
    """A ``/refs/`` request that is not served: ``status`` is the HTTP answer (403 bad, 410 expired, 404 gone)."""

    code = "ref_refused"

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class RefFile:
    path: Path
    content_type: str


def same_secret(given: str, expected: str) -> bool:
    """Whether text from a request (a token, a cookie, an Authorization header) is what it should be, in
    constant time. Compared as bytes: ``hmac.compare_digest`` raises TypeError on a str with non-ASCII
    characters (a 500 for a forged token), and aiohttp hands over undecodable bytes as lone surrogates."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class RefStore:
    def __init__(self, folder: Path, spool: Path, secret: bytes, *, base_url: str | None = None,
                 ttl_s: float = 3600.0, keep_days: float = 7.0, clock: Callable[[], float] = time.time) -> None:
        self.folder = folder
        self.spool = spool
        self._secret = secret
        #: where ``/refs/`` is reachable from the gateway (``PUBLIC_URL``, or loopback for the sandbox)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.ttl_s = ttl_s
        self.keep_days = keep_days
        self.clock = clock

    def __repr__(self) -> str:
        return f"RefStore(folder={str(self.folder)!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ keys
    def put(self, data: bytes) -> str:
        """Keep an image (already checked) and return its key."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = secrets.token_hex(16)
        (self.folder / name).write_bytes(data)
        return f"up:{name}"

    @staticmethod
    def result_key(job_id: str, n: int = 0) -> str:
        return f"job:{job_id}:{n}"

    def path(self, key: str) -> Path | None:
        """The file behind a key, if it is still kept."""
        match = _UPLOAD.match(key)
        if match:
            path = self.folder / match.group(1)
            return path if path.is_file() else None
        match = _RESULT.match(key)
        if match:
            job_id, n = match.group(1), match.group(2)
            found = sorted((self.spool / job_id).glob(f"{job_id}-{n}.*"))
            return found[0] if found else None
        return None

    # ------------------------------------------------------------------ URLs
    def _sign(self, key: str, expires: int) -> str:
        return _b64(hmac.new(self._secret, f"{key}|{expires}".encode(), hashlib.sha256).digest()[:_SIG_BYTES])

    def token(self, key: str) -> str:
        expires = int(self.clock() + self.ttl_s)
        return f"{_b64(key.encode())}.{expires}.{self._sign(key, expires)}"

    def url(self, key: str) -> str:
        """A signed URL the gateway can fetch for the next ``ttl_s`` seconds."""
        if self.base_url is None:
            raise UserInputError(messages.refs_need_public_url())
        if self.path(key) is None:
            raise NotFound(f"reference {key} is no longer kept", user_message=messages.reference_gone())
        return f"{self.base_url}/refs/{self.token(key)}"

    def resolve(self, image_urls: list[str]) -> list[str]:
        """A job's ``image_urls`` as the gateway gets them: stored references become signed URLs."""
        return [self.url(u[len(REF_PREFIX):]) if u.startswith(REF_PREFIX) else u for u in image_urls]

    def open(self, token: str) -> RefFile:
        """The file a token names, or ``RefRefused`` (403 forged or malformed, 410 expired, 404 gone)."""
        try:
            raw_key, raw_expires, signature = token.split(".")
            if len(token) > _TOKEN_MAX_CHARS or not _EXPIRES.match(raw_expires):
                raise ValueError("malformed")
            key = _unb64(raw_key).decode()
            expires = int(raw_expires)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise RefRefused(403, "malformed token") from None
        if not same_secret(signature, self._sign(key, expires)):
            raise RefRefused(403, "bad signature")
        if expires < self.clock():
            raise RefRefused(410, "expired")
        path = self.path(key)
        if path is None:
            raise RefRefused(404, "no longer kept")
        with path.open("rb") as handle:
            head = handle.read(16)
        return RefFile(path, sniff(head) or  # the content decides the type, never the name
                       "application/octet-stream")

    # ------------------------------------------------------------------ retention
    def cleanup(self, active_jobs: set[str] | frozenset[str] = frozenset()) -> int:
        """Delete uploads and kept results older than ``keep_days`` (never those of jobs in flight)."""
        cutoff = self.clock() - self.keep_days * 86400
        removed = 0
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    removed += 1
        if self.spool.is_dir():
            for folder in self.spool.iterdir():
                if folder.is_dir() and folder.name not in active_jobs and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        if removed:
            log.info("refs cleanup: removed %d file(s)/folder(s) older than %g days", removed, self.keep_days)
        return removed
