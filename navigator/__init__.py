"""Navigator: a multi-cluster service-mesh control plane for Envoy sidecars, on etcd."""

__version__ = "0.1.0"
