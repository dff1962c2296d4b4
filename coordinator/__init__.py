"""Coordination through etcd: access, leases, elections with fencing, shard assignment."""
