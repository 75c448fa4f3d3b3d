"""The Sanic app of the neuron HTTP API."""
