"""``navigator bench``: the mesh-scale benchmark (the system on loopback, simulated sidecars,
real Envoys, churn through the Kubernetes API, and the floor measured in the same run)."""
