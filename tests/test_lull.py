"""The lull (``core.jobs.lull``): work that decides no answer waits while commands are being answered.

No timings are asserted: the waits are driven by commands entered and left, and by turns of the loop.
"""

from __future__ import annotations

import asyncio
import gc

from imagine_bot.core.jobs.lull import Lull, LullQueue


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def start_work(lull: Lull) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A task that waits on ``lull`` and then sets the event."""
    went = asyncio.Event()

    async def work() -> None:
        await lull.wait()
        went.set()

    return asyncio.create_task(work()), went


async def test_nothing_waits_when_no_command_was_seen():
    lull = Lull()
    await lull.wait()
    assert lull.held == 0


async def test_a_waiter_is_held_while_a_command_is_answered_and_goes_once_it_is():
    lull = Lull(quiet_s=0.0, most_s=3600)
    with lull.command():
        task, went = start_work(lull)
        await turns()
        await asyncio.sleep(0.05)  # timers too: still held, however long the command takes
        assert not went.is_set() and lull.waiting == 1
    await asyncio.wait_for(went.wait(), 5)
    await task
    assert lull.held == 1 and lull.waiting == 0


async def test_a_command_decided_in_the_meantime_holds_the_waiters_again():
    """``touch`` (a submit, a precheck) counts as a command: the waiters go only after some calm turns."""
    lull = Lull(quiet_s=0.0, most_s=3600)
    with lull.command():
        task, went = start_work(lull)
        await turns()
    for _ in range(30):  # a command decided at every turn of the loop: never calm
        lull.touch()
        await asyncio.sleep(0)
    assert not went.is_set()
    await asyncio.wait_for(went.wait(), 5)
    await task


async def test_steady_commands_hold_work_for_most_s_at_most_and_waiters_keep_their_order():
    lull = Lull(quiet_s=0.0, most_s=0.05)
    order: list[int] = []

    async def work(n: int) -> None:
        await lull.wait()
        order.append(n)

    with lull.command():  # never answered while the work waits
        tasks = [asyncio.create_task(work(n)) for n in range(5)]
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == [0, 1, 2, 3, 4]


async def test_release_lets_every_waiter_go_and_a_cancelled_waiter_is_skipped():
    lull = Lull(quiet_s=3600, most_s=3600)
    lull.touch()
    first = asyncio.create_task(lull.wait())
    second = asyncio.create_task(lull.wait())
    await turns()
    first.cancel()
    await turns()
    lull.release()
    await asyncio.wait_for(second, 5)
    assert first.cancelled() and lull.waiting == 0


async def test_a_queue_starts_its_work_once_in_order_from_one_task_when_the_lull_comes():
    lull = Lull(quiet_s=0.0, most_s=3600)
    started: list[str] = []
    queue = LullQueue(lull, started.append, name="test")
    assert not queue.holding  # nothing waits: whoever queues starts the work at once
    with lull.command():
        assert queue.holding
        for key in ("a", "b", "a", "c"):
            queue.add(key)
        queue.discard("c")
        await turns()
        assert started == [] and len(queue) == 2 and "a" in queue and lull.waiting == 1
    task = queue.task
    assert task is not None
    await asyncio.wait_for(task, 5)
    assert started == ["a", "b"] and len(queue) == 0 and queue.task is None


async def test_under_steady_commands_each_queued_key_waits_its_own_most_s_not_the_first_ones():
    """A stream of commands that never stops: the first key goes when it has waited ``most_s``, a key that
    came later only once it has too (as a task each waiting would), not with the first one."""
    lull = Lull(quiet_s=0.0, most_s=1.6)
    started: list[str] = []
    went = asyncio.Queue[str]()
    queue = LullQueue(lull, went.put_nowait, name="test")
    with lull.command():  # never answered while the work waits
        queue.add("first")
        await asyncio.sleep(0.8)  # the later key is due 0.8 s after the first: a wide margin on a busy machine
        queue.add("later")
        started.append(await asyncio.wait_for(went.get(), 5))
        assert started == ["first"] and went.empty()
        started.append(await asyncio.wait_for(went.get(), 5))
        assert started == ["first", "later"]


async def test_release_starts_every_queued_key_and_clear_starts_none():
    lull = Lull(quiet_s=3600, most_s=3600)
    started: list[str] = []
    released, cleared = LullQueue(lull, started.append, name="r"), LullQueue(lull, started.append, name="c")
    lull.touch()
    for key in ("a", "b"):
        released.add(key)
    cleared.add("c")
    await turns()
    assert cleared.clear() == 1 and cleared.task is None
    lull.release()
    await turns()
    assert started == ["a", "b"] and released.task is None



async def test_a_start_that_fails_is_logged_and_the_others_still_start(caplog):
    lull = Lull(quiet_s=0.0, most_s=3600)
    started: list[str] = []

    def start(key: str) -> None:
        if key == "bad":
            raise RuntimeError("a bug")
        started.append(key)

    queue = LullQueue(lull, start, name="test")
    with lull.command():
        for key in ("a", "bad", "b"):
            queue.add(key)
    assert queue.task is not None
    await asyncio.wait_for(queue.task, 5)
    assert started == ["a", "b"] and "test: could not start bad" in caplog.text


# ---------------------------------------------------------------------- the garbage collector (issue 22)


async def wait_for(condition, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_the_collector_is_off_while_commands_are_answered_and_on_again_at_the_lull():
    lull = Lull(quiet_s=0.01, most_s=3600)
    lull.pauses_collector = True
    assert gc.isenabled()
    try:
        with lull.command():
            assert not gc.isenabled() and lull.collector_paused
            with lull.command():  # a second command at once: still off, one pause
                assert not gc.isenabled()
            await asyncio.sleep(0.05)  # however long the command takes
            assert not gc.isenabled()
        await wait_for(gc.isenabled)
        assert not lull.collector_paused
        with lull.command():  # the next burst turns it off again
            assert not gc.isenabled()
    finally:
        lull.release()
    assert gc.isenabled()


async def test_the_collector_comes_back_after_most_s_under_a_steady_stream_of_commands():
    lull = Lull(quiet_s=0.01, most_s=0.1)
    lull.pauses_collector = True
    try:
        with lull.command():
            assert not gc.isenabled()
            await wait_for(gc.isenabled)  # a command never answered: on again after most_s
    finally:
        lull.release()


async def test_the_collector_is_left_alone_unless_asked_and_when_someone_else_turned_it_off():
    lull = Lull(quiet_s=0.0, most_s=3600)
    with lull.command():  # not asked (tests, one-shot commands): untouched
        assert gc.isenabled()
    lull.pauses_collector = True
    gc.disable()
    try:
        with lull.command():
            assert not lull.collector_paused
        await turns()
        assert not gc.isenabled()  # not turned on by the lull: it did not turn it off
    finally:
        gc.enable()


def test_a_command_without_an_event_loop_leaves_the_collector_on():
    lull = Lull()
    lull.pauses_collector = True
    with lull.command():
        assert gc.isenabled()
