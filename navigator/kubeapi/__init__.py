"""A local Kubernetes API server for the lab, where no real one can be installed.

``server.KubeApiServer`` serves the wire protocol that the official client and kubectl use;
``server.main`` is the blocking entry point behind ``navigator kube-api``. The modules:
``resources`` (the table of kinds), ``validation`` (schemas), ``store`` (objects, history,
watches), ``patch``, ``selectors``, ``openapi`` (discovery and OpenAPI v3), ``errors``
(Status objects) and ``logs`` (JSON log lines).
"""
