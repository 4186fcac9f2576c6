"""The image gateway: an async client for the ModKie / kie.ai jobs API and the callback reader."""

from imagine_bot.core.gateway.callbacks import Callback, parse_callback, read_callback, sign_kie, sign_modkie
from imagine_bot.core.gateway.client import Download, GatewayClient, TaskRecord, TaskStage

__all__ = ["Callback", "Download", "GatewayClient", "TaskRecord", "TaskStage", "parse_callback", "read_callback",
           "sign_kie", "sign_modkie"]
