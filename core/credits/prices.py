"""Prices: what a job on each model costs, from the gateway's model list when it answers.

``GET /api/v1/models`` carries a ``creditCost`` per model, in a shape that is not published, so it is
read defensively (``parse_costs``): the list may be the ``data`` itself, or under ``models``, ``list``,
``items``, ``records`` or ``data``; or a mapping of model id to entry; an entry names its model as
``model``, ``id``, ``modelId``, ``model_id`` or ``name``; ``creditCost`` (or ``credit_cost``, ``credits``,
``cost``, ``price``) may be a number, a numeric string or an object of numbers (per quality, say: the
highest is taken, so a reservation always covers the charge). Anything else is skipped.

The answer is cached for ``ttl_s``; until the first answer, or when the gateway fails, the catalog's
numbers apply. A stale cache is refreshed in the background, never on a user's request path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from imagine_bot.core.errors import GatewayError
from imagine_bot.core.gateway import GatewayClient
from imagine_bot.core.gateway.catalog import ModelSpec

log = logging.getLogger(__name__)

_LIST_KEYS = ("models", "list", "items", "records", "data")
_ID_KEYS = ("model", "id", "modelId", "model_id", "name")
_COST_KEYS = ("creditCost", "credit_cost", "credits", "cost", "price")


def _number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return math.ceil(value)
    if isinstance(value, dict):
        numbers = [n for n in (_number(v) for v in value.values()) if n is not None]
        return max(numbers) if numbers else None
    return None


def _entries(data: Any) -> Iterable[tuple[str | None, Any]]:
    if isinstance(data, list):
        return ((None, item) for item in data)
    if isinstance(data, dict):
        for key in _LIST_KEYS:
            if isinstance(data.get(key), list | dict):
                return _entries(data[key])
        return ((str(k), v) for k, v in data.items())
    return ()


def parse_costs(data: Any) -> dict[str, int]:
    """Model id -> credits per job, from whatever ``/api/v1/models`` answered (see the module doc)."""
    costs: dict[str, int] = {}
    for key, entry in _entries(data):
        model, cost = key, None
        if isinstance(entry, dict):
            model = next((str(entry[k]) for k in _ID_KEYS if isinstance(entry.get(k), str) and "/" in entry[k]),
                         model)
            cost = next((c for c in (_number(entry.get(k)) for k in _COST_KEYS) if c is not None), None)
        else:
            cost = _number(entry)
        if model and "/" in model and cost is not None:
            costs[model] = cost
    return costs


class Prices:
    def __init__(self, gateway: GatewayClient, *, ttl_s: float = 3600.0, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gateway = gateway
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._costs: dict[str, int] = {}
        self._fetched: float | None = None
        self._refreshing: asyncio.Task[bool] | None = None

    def cost(self, model: ModelSpec) -> int:
        """The gateway's price for ``model`` if known, else the catalog's; starts a refresh when stale."""
        if self._fetched is None or self.clock() - self._fetched > self.ttl_s:
            self._refresh_soon()
        return self._costs.get(model.id, model.cost)

    async def refresh(self) -> bool:
        """Ask the gateway now; False (and the old prices kept) when it does not answer usefully."""
        try:
            data = await asyncio.wait_for(self.gateway.models_raw(), self.timeout_s)
        except (GatewayError, TimeoutError) as error:
            log.info("model prices: the gateway did not answer (%s); using the catalog's",
                     getattr(error, "code", type(error).__name__))
            self._fetched = self.clock()  # try again after ttl_s, not on every request
            return False
        costs = parse_costs(data)
        self._fetched = self.clock()
        if not costs:
            log.warning("model prices: no creditCost found in the gateway's model list; using the catalog's")
            return False
        self._costs = costs
        log.info("model prices from the gateway: %s", ", ".join(f"{k} {v}" for k, v in sorted(costs.items())))
        return True

    def _refresh_soon(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return
        try:
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh(), name="prices-refresh")
        except RuntimeError:  # no running loop (a synchronous caller): the next async one refreshes
            pass

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
