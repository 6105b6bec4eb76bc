"""What two or more Corral parts need: errors, events, wire schemas, storage, config, RPC contracts."""
