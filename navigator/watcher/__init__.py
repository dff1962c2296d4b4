"""The watcher: Kubernetes objects of one cluster → normalized state in etcd.

``convert`` (pure) turns API objects into model objects, ``informer`` lists and watches,
``store`` writes to etcd, ``runner.run_watcher`` runs them together (the async API the lab
and the tests use) and ``main`` is the ``navigator watcher`` command.
"""

from navigator.watcher.convert import ConversionError
from navigator.watcher.informer import KubeConfigError
from navigator.watcher.runner import Watcher, run_watcher
from navigator.watcher.store import SyncStore

__all__ = ["ConversionError", "KubeConfigError", "SyncStore", "Watcher", "run_watcher"]
