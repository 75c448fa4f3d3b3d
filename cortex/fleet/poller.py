"""Polling every neuron concurrently: discovery (until cached, then now and then), health and
models. A neuron goes down after 3 failed polls in a row and up again on the first success."""

from __future__ import annotations

import asyncio
import logging
import time

from cortex.fleet.neurons import NeuronClient, NeuronUnreachable
from cortex.fleet.state import DOWN_AFTER_FAILURES, Fleet, Node

log = logging.getLogger(__name__)

DISCOVERY_REFRESH_SECS = 300.0


async def poll_node(node: Node, client: NeuronClient) -> bool:
    """One poll of one neuron; returns whether it answered."""
    try:
        discovery = None
        refresh = node.discovery is None or (node.last_ok or 0) < time.monotonic() - DISCOVERY_REFRESH_SECS
        if refresh:
            discovery = await client.discovery(node.endpoint)
        health, models = await asyncio.gather(client.health(node.endpoint), client.models(node.endpoint))
    except NeuronUnreachable as exc:
        reason = str(exc)
        if node.record_failure(reason):
            log.warning("neuron %s is down (%d failed polls): %s", node.name, DOWN_AFTER_FAILURES, reason)
        elif not node.up and node.failures >= DOWN_AFTER_FAILURES and reason != node.poll_error:
            # never up (past a start-up's grace of a few polls), or down for a new reason: say so once
            log.warning("neuron %s does not answer: %s", node.name, reason)
        else:
            log.debug("poll of %s failed: %s", node.name, reason)
        if node.failures >= DOWN_AFTER_FAILURES:
            node.poll_error = reason
        return False
    was_up = node.up
    node.poll_error = None
    node.record_success(discovery, health, models)
    if not was_up:
        log.info(
            "neuron %s is up (%d devices, %d models)",
            node.name,
            len(node.discovery.devices) if node.discovery else 0,
            len(models),
        )
    return True


async def poll_once(fleet: Fleet, client: NeuronClient) -> None:
    await asyncio.gather(*(poll_node(n, client) for n in fleet.nodes.values()))
    for node in fleet.up_nodes():
        fleet.learn_footprints(node)


async def poll_forever(fleet: Fleet, client: NeuronClient, interval_secs: float) -> None:
    while True:
        started = time.monotonic()
        try:
            await poll_once(fleet, client)
        except Exception:  # never let one bad answer stop polling
            log.exception("fleet poll failed")
        await asyncio.sleep(max(0.0, interval_secs - (time.monotonic() - started)))
