"""One module per provider wire format, each a :class:`dispatcher.sim.wire.ProviderFormat`."""
