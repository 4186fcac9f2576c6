"""Make a result fit Discord's attachment size limit.

An image at or under the limit is sent as it is. A larger one is re-encoded with Pillow, JPEG first
(every client shows it) then WebP, stepping the quality down; if even the smallest does not fit, the
caller links the gateway's result URL instead (which expires). The work is ``core.media.imaging.fit``.
"""

from __future__ import annotations

from imagine_bot.core.media.imaging import Upload, fit

__all__ = ["Upload", "fit"]
