"""The local lab: real etcd, local Kubernetes API servers, the control plane, Envoys, backends."""
