"""What several services share: holdings of ended attempts, their event handlers, the announcer."""
