"""Policy service: routes each proposal to auto-apply, review or reject by an explicit, versioned policy."""
