"""The Sanic app of the gateway: routes, proxying, error envelopes, auth."""
