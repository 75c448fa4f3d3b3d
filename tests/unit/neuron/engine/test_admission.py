"""Admission per model: bounded concurrency, FIFO queue, 429 past the queue, 503 past the wait;
and the neuron-wide intake a restart closes and drains."""

from __future__ import annotations

import asyncio

import pytest

from cortex.protocol.errors import ApiError
from neuron.engine.admission import Admission, Intake


def test_slots_queue_in_order_and_reject_past_the_bounds():
    async def scenario():
        adm = Admission("m", max_in_flight=1, max_queue_depth=2, max_wait_secs=5)
        await adm.acquire()
        order: list[str] = []

        async def waiter(name: str):
            await adm.acquire()
            order.append(name)

        a = asyncio.create_task(waiter("a"))
        b = asyncio.create_task(waiter("b"))
        await asyncio.sleep(0.01)
        assert (adm.in_flight, adm.queued) == (1, 2)
        with pytest.raises(ApiError) as full:
            await adm.acquire()
        assert full.value.status == 429 and full.value.retry_after and full.value.retry_after >= 1
        adm.release()
        await a
        adm.release()
        await b
        assert order == ["a", "b"] and adm.in_flight == 1
        adm.release()
        await asyncio.wait_for(adm.drained(), 1)

    asyncio.run(scenario())


def test_waiting_past_max_wait_is_503_and_frees_the_queue_place():
    async def scenario():
        adm = Admission("m", max_in_flight=1, max_queue_depth=1, max_wait_secs=0.05)
        await adm.acquire()
        with pytest.raises(ApiError) as late:
            await adm.acquire()
        assert late.value.status == 503 and late.value.retry_after is not None
        assert adm.queued == 0
        adm.release()
        assert adm.in_flight == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_no_slot_behind():
    async def scenario():
        adm = Admission("m", max_in_flight=1, max_queue_depth=4, max_wait_secs=5)
        await adm.acquire()
        task = asyncio.create_task(adm.acquire())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        adm.release()
        assert (adm.in_flight, adm.queued) == (0, 0)

    asyncio.run(scenario())


def test_a_closed_intake_refuses_with_503_neuron_restarting_and_drains_what_is_inside():
    async def scenario():
        intake = Intake()
        finished: list[str] = []

        async def request(name: str, secs: float):
            intake.enter()
            try:
                await asyncio.sleep(secs)
                finished.append(name)
            finally:
                intake.leave()

        running = asyncio.create_task(request("running", 0.05))
        await asyncio.sleep(0)
        assert intake.inside == 1
        intake.close()
        with pytest.raises(ApiError) as refused:
            intake.enter()
        assert refused.value.status == 503 and refused.value.code == "neuron_restarting"
        assert refused.value.retry_after and refused.value.retry_after >= 1
        assert await intake.drain(5) == 0
        assert finished == ["running"] and intake.inside == 0 and running.done()
        assert await intake.drain(0) == 0  # nothing inside: at once

    asyncio.run(scenario())


def test_draining_past_its_bound_cancels_the_requests_still_inside():
    async def scenario():
        intake = Intake()
        entered = asyncio.Event()

        async def endless():
            intake.enter()
            try:
                entered.set()
                await asyncio.sleep(60)
            finally:
                intake.leave()

        task = asyncio.create_task(endless())
        await entered.wait()
        intake.close()
        assert await asyncio.wait_for(intake.drain(0.05), 5) == 1
        assert task.cancelled() and intake.inside == 0

    asyncio.run(scenario())
