"""Width methods: cut query heads, KV groups and MLP channels, keeping every layer."""
