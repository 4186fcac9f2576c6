"""Secrets at rest: tokens sealed with a key the operator provides, or kept plain when there is none.

A sealed value is ``enc1:`` followed by a Fernet token (AES-128-CBC with an HMAC-SHA256, a timestamp and a
random IV: ``cryptography.fernet``), so one column can hold sealed and plain values side by side: rows
written before the key was set are read as they are and sealed again by ``Installations.reseal``. The key
is a Fernet key (32 random bytes, url-safe base64), made with::

    python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"

A sealed value read without the key, or with another key, raises ``ConfigError`` naming the setting that
holds the key: a token is never guessed and never returned half-read.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from imagine_bot.core.errors import ConfigError

PREFIX = "enc1:"
MAKE_KEY = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


class SecretBox:
    """Seals and opens secrets with the key in ``setting`` (named in every error), or passes them plain."""

    def __init__(self, key: str | None, *, setting: str) -> None:
        self.setting = setting
        self._fernet: Fernet | None = None
        if key and key.strip():
            try:
                self._fernet = Fernet(key.strip().encode())
            except ValueError:
                raise ConfigError(setting, f"is not a valid key (32 url-safe base64-encoded bytes): make one "
                                  f"with {MAKE_KEY}") from None

    @property
    def sealing(self) -> bool:
        """Whether new values are sealed (a key is set)."""
        return self._fernet is not None

    @staticmethod
    def is_sealed(stored: str) -> bool:
        return stored.startswith(PREFIX)

    def seal(self, value: str) -> str:
        if self._fernet is None:
            return value
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def open(self, stored: str) -> str:
        if not self.is_sealed(stored):
            return stored
        if self._fernet is None:
            raise ConfigError(self.setting, "is not set, but the database holds tokens sealed with a key: set "
                              "it to the key they were written with")
        try:
            return self._fernet.decrypt(stored.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise ConfigError(self.setting, "does not open the tokens in the database: set it to the key they "
                              "were written with") from None
