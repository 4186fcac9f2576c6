"""Checking reference images before anything is reserved, and turning them into ``image_urls`` entries.

The edit model takes 1 to 14 jpeg, png or webp images of at most 10 MB each, fetched by the gateway. Every
reference is checked here first, so that a bad one is refused with a plain answer and nothing is charged:

- the count (1-14);
- the type, by the first bytes of the content (never the file name or a declared type);
- the size: a larger image is re-encoded (``imaging.shrink``, one image at a time) and served from our own
  ``/refs/`` when that is possible, refused otherwise; one of more than ``imaging.MAX_PIXELS`` (read from
  its header) is refused before anything is decoded;
- the address: a URL is fetched only from a public address or a trusted origin, and redirects are followed
  by hand so that every hop is checked alike (``core/netaddr``). Every hop that fails the check gets the same
  answer, so a redirect cannot tell a user what listens inside the bot's network.

A reference is a public URL (a Discord attachment, a URL typed in the terminal), bytes we hold (a Slack
file downloaded with the bot token, a local file) or one of our own results (Vary, Remix). Public URLs
that pass are handed to the gateway as they are; everything else is kept in the ``RefStore`` and becomes
``ref:<key>``, signed into a URL when the job is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httpx

from imagine_bot.core.chat import messages
from imagine_bot.core.errors import UserInputError
from imagine_bot.core.gateway.catalog import REFERENCE_MAX_BYTES, ModelSpec
from imagine_bot.core.media.imaging import MAX_PIXELS, image_size, shrink, sniff
from imagine_bot.core.media.netaddr import Origin, Resolver, non_public_addresses, origin, system_resolve
from imagine_bot.core.media.refstore import REF_PREFIX, RefStore

#: the most we read of a public reference (a larger one could not be shrunk in reasonable time anyway)
FETCH_CAP_BYTES = 40 * 1024 * 1024
#: the most redirects one reference may go through (each hop checked like the first)
MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class Reference:
    """One image a user gave. ``name`` is how they know it (a file name, "image 2")."""

    name: str
    url: str | None = None
    data: bytes | None = None
    #: an image already in the store (one of our results)
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """Checked references: what goes in ``image_urls``, and the first one's (width, height) when readable
    (an edit without ``--ar`` takes the supported aspect ratio nearest to it)."""

    image_urls: list[str]
    first_size: tuple[int, int] | None


class _Refused(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class ReferenceChecker:
    def __init__(self, store: RefStore, http: httpx.AsyncClient, *, max_bytes: int = REFERENCE_MAX_BYTES,
                 timeout_s: float = 20.0, trusted_origins: Iterable[str] = (),
                 resolve: Resolver = system_resolve) -> None:
        self.store = store
        self.http = http
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        #: origins (scheme, host, port) we fetch from even when they are not public: the configured Discord,
        #: Slack and gateway addresses, our own /refs/. Anything else must resolve to public addresses only,
        #: so a URL typed in chat cannot make the bot probe its own network. An origin, never a bare host:
        #: trusting ``localhost`` for a local gateway must not open every other port on it.
        self.trusted_origins: frozenset[Origin] = frozenset(origin(httpx.URL(u)) for u in trusted_origins if u)
        self.resolve = resolve
        #: shrinking decodes a whole image: one at a time, so that many large references cannot add up
        self._shrinking = asyncio.Lock()

    async def prepare(self, model: ModelSpec, references: Sequence[Reference]) -> Prepared:
        """The ``image_urls`` for ``references`` and the first one's size, or ``UserInputError`` naming every
        refused one."""
        low, high = model.references
        if not low <= len(references) <= high:
            raise UserInputError(messages.reference_count(len(references), low, high))
        results = await asyncio.gather(*(self._one(ref) for ref in references), return_exceptions=True)
        problems = [r.text for r in results if isinstance(r, _Refused)]
        if problems:
            raise UserInputError(messages.references_refused(problems))
        for result in results:
            if isinstance(result, BaseException):
                raise result
        checked = [r for r in results if isinstance(r, tuple)]
        return Prepared([url for url, _ in checked], checked[0][1] if checked else None)

    async def _one(self, ref: Reference) -> tuple[str, tuple[int, int] | None]:
        """The reference's ``image_urls`` entry and its size (width, height; None if unreadable)."""
        if ref.key is not None:
            path = self.store.path(ref.key)
            if path is None:
                raise _Refused(messages.reference_gone())
            self._need_public_url()
            return REF_PREFIX + ref.key, await asyncio.to_thread(lambda: image_size(path.read_bytes()))
        if ref.data is not None:
            return await self._keep(ref, ref.data), image_size(ref.data)
        assert ref.url is not None
        data, complete = await self._fetch(ref)
        if complete and len(data) <= self.max_bytes:
            return ref.url, image_size(data)  # public and fine as it is: the gateway fetches it itself
        return await self._keep(ref, data if complete else None), image_size(data) if complete else None

    async def _keep(self, ref: Reference, data: bytes | None) -> str:
        """Store bytes (shrunk if too large) to serve them from ``/refs/``."""
        if data is None:
            raise _Refused(messages.reference_too_large(ref.name, FETCH_CAP_BYTES, self.max_bytes, shrinkable=False))
        if sniff(data[:16]) is None:
            raise _Refused(messages.reference_not_image(ref.name, data[:512]))
        if len(data) > self.max_bytes:
            if self.store.base_url is None:
                raise _Refused(messages.reference_too_large(ref.name, len(data), self.max_bytes, shrinkable=False))
            size = await asyncio.to_thread(image_size, data)  # the header only: nothing is decoded yet
            if size is not None and size[0] * size[1] > MAX_PIXELS:
                raise _Refused(messages.reference_too_many_pixels(ref.name, size, MAX_PIXELS))
            async with self._shrinking:
                smaller = await asyncio.to_thread(shrink, data, self.max_bytes)
            if smaller is None:
                raise _Refused(messages.reference_too_large(ref.name, len(data), self.max_bytes, shrinkable=True))
            data = smaller
        self._need_public_url()
        return REF_PREFIX + await asyncio.to_thread(self.store.put, data)

    def _need_public_url(self) -> None:
        if self.store.base_url is None:
            raise UserInputError(messages.refs_need_public_url())

    async def _fetch(self, ref: Reference) -> tuple[bytes, bool]:
        """The content of a public reference (up to the cap); ``complete`` False when it is larger.
        Redirects are followed here, not by httpx, so that every hop passes ``_check_hop``."""
        assert ref.url is not None
        try:
            url = httpx.URL(ref.url)
        except httpx.InvalidURL:
            raise _Refused(messages.reference_unreachable(ref.name, "not a URL")) from None
        chunks: list[bytes] = []
        size = 0
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                await self._check_hop(ref, url)
                async with self.http.stream("GET", url, follow_redirects=False, timeout=self.timeout_s) as response:
                    if response.is_redirect:
                        url = self._redirect_target(ref, url, response.headers.get("Location", ""))
                        continue
                    if response.status_code != 200:
                        raise _Refused(messages.reference_unreachable(ref.name, f"HTTP {response.status_code}"))
                    async for chunk in response.aiter_bytes():
                        if not chunks and sniff(chunk[:16]) is None and len(chunk) >= 16:
                            raise _Refused(messages.reference_not_image(ref.name, chunk[:512]))
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > FETCH_CAP_BYTES:
                            return b"", False
                    break
            else:
                raise _Refused(messages.reference_unreachable(ref.name, f"more than {MAX_REDIRECTS} redirects"))
        except httpx.HTTPError as exc:
            raise _Refused(messages.reference_unreachable(ref.name, type(exc).__name__)) from exc
        data = b"".join(chunks)
        if sniff(data[:16]) is None:
            raise _Refused(messages.reference_not_image(ref.name, data[:512]))
        return data, True

    async def _check_hop(self, ref: Reference, url: httpx.URL) -> None:
        """Refuse a URL (the first or a redirect's) that is not http(s), or that is neither a trusted origin
        nor a host whose every address is public. A name that does not resolve is refused too, with the same
        words: the answer must not tell an inside name that exists, or a port that is open, from one that is
        not."""
        if url.scheme not in ("http", "https"):
            raise _Refused(messages.reference_unreachable(ref.name, "not an http(s) URL"))
        where = origin(url)
        trusted = self.trusted_origins
        if self.store.base_url:
            trusted = trusted | {origin(httpx.URL(self.store.base_url))}
        if where in trusted:
            return
        inward = await non_public_addresses(url.host, where[2] or 443, self.resolve)
        if inward:
            raise _Refused(messages.reference_not_public(ref.name))

    @staticmethod
    def _redirect_target(ref: Reference, url: httpx.URL, location: str) -> httpx.URL:
        try:
            if location:
                return url.join(location)
        except httpx.InvalidURL:
            pass
        raise _Refused(messages.reference_unreachable(ref.name, "a redirect to a bad URL"))
