"""Fleet state, poller, placement, scheduler and evictor."""
