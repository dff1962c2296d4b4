"""Translation of normalized state into Envoy resources, and the shard runner that publishes it."""
