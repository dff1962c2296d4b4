"""The xDS front-end: serves translated snapshots from etcd to Envoy sidecars over ADS.

``cache`` loads and watches the snapshots (the only part that talks to etcd); ``server`` speaks
the Aggregated Discovery Service protocol to Envoy and depends on the cache only through the
narrow ``cache.ConfigSource`` interface; ``wire`` holds the few protobuf wire-format helpers
that let responses be assembled from pre-encoded bytes.

NOTE: this package knows stored snapshots (``navigator.snapshot``), never how they were made:
it must not import ``shards``.
"""
