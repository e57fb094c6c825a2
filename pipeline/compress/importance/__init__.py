"""Which heads and channels matter: scores that rank the prunable units of a layer."""
