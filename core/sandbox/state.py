"""The embedded sandbox's tasks in a small JSON file beside the database, so that a job in flight when the
bot restarts finds its task again (``MODKIE_BASE_URL=sandbox``), as it would at the real gateway.

Only what the task walk needs is kept (ids, inputs, creation time, delays, whether it was charged); tasks
older than ``KEEP_S`` are dropped at each save, which keeps the file small. Writes go to a temporary file
that replaces the old one, so a crash mid-write leaves the previous state.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: tasks older than a day are forgotten (the bot gives up on a job after JOB_TIMEOUT_S, 10 minutes by default)
KEEP_S = 24 * 3600
VERSION = 1


@dataclass(frozen=True, slots=True)
class SavedTask:
    task_id: str
    model: str
    input: dict[str, Any]
    callback_url: str | None
    created_ms: int
    delays: dict[str, float]
    fails: bool
    charged: int | None
    fail_msg: str


def save(path: Path, tasks: list[SavedTask], credits: int) -> None:
    now_ms = int(time.time() * 1000)
    kept = [task for task in tasks if now_ms - task.created_ms < KEEP_S * 1000]
    body = {"version": VERSION, "credits": credits, "tasks": [asdict(task) for task in kept]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


def load(path: Path) -> tuple[list[SavedTask], int | None]:
    """The saved tasks and credit balance; nothing (and a warning) for a missing or unreadable file."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        tasks = [SavedTask(**raw) for raw in body["tasks"]]
        credits = int(body["credits"])
    except FileNotFoundError:
        return [], None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("sandbox: ignoring the unreadable task file %s (%s)", path, exc)
        return [], None
    return tasks, credits

