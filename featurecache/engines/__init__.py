"""Stage 1, where shards run: one :class:`ShardRunner` code path, engines as plug-ins."""
