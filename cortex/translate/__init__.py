"""Dialect translation as pure functions and small state machines: Anthropic Messages and OpenAI
Responses to and from the OpenAI chat dialect the neurons speak. No I/O here; the gateway wires
these into its routes."""
