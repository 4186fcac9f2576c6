"""The sandbox gateway: the ModKie jobs contract served locally (aiohttp) with Pillow-rendered images."""

from imagine_bot.core.sandbox.render import image_size, render_png
from imagine_bot.core.sandbox.server import DEFAULT_DELAYS, SandboxGateway, SandboxTask, serve_forever, stage_at

__all__ = ["DEFAULT_DELAYS", "SandboxGateway", "SandboxTask", "image_size", "render_png", "serve_forever",
           "stage_at"]
