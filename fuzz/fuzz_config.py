"""Fuzz target: the configuration files commands read.

Chosen by the flags byte of the ``harness`` frames (``flags % 4``), each with the error its
command reports (anything else would end the command with a traceback):

0. a kubeconfig (``navigator watcher --kubeconfig``): ``informer.KubeApi.from_kubeconfig``,
   ``KubeConfigError``. Frame 0 is the file, frame 1 (if any) the context to use;
1. the manifests ``navigator kube-api --load`` creates (``server.load_manifests``):
   ``errors.ApiError``, ``OSError``, ``yaml.YAMLError``, as its ``main`` handles them. Each
   frame is a file of a directory (control bit 0: ``.json`` rather than ``.yaml``);
2. the lab's topology (``navigator lab --examples``, ``lab.main.load_topology``):
   ``LabError``. Frame 0 is ``lab.yaml``, the others manifests of ``east`` (control bit 0
   clear) or ``west``;
3. the benchmark's sidecar spec (``python -m navigator.bench.sidecars --spec``), a parse
   error (``SystemExit`` 2).

A failure that is one of ``harness.OPEN_ISSUES`` is tolerated.

NOTE: a kubeconfig can name programs to run for credentials (``exec``, the ``gcp`` and
``oidc`` auth providers; oidc also fetches a token over the network). The fuzzer replaces
those three entry points of the client library with ones that fail as a broken plugin
would: it never runs a program it made up, nor leaves this machine.

Run: ``python fuzz/fuzz_config.py [libFuzzer flags] DIR`` with DIR a copy of
``fuzz/corpus/config`` (libFuzzer adds what it finds to DIR; see fuzz/README.md).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import io
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import yaml
from kubernetes.aio.config import config_exception, kube_config

with harness.instrumented(__name__):
    from navigator.bench import sidecars
    from navigator.kubeapi import errors, store
    from navigator.kubeapi import server as kubeapi_server
    from navigator.lab import main as lab_main
    from navigator.watcher import informer


EXTRA = (
    "apiVersion",
    "kind",
    "Config",
    "List",
    "items",
    "clusters",
    "cluster",
    "server",
    "users",
    "user",
    "contexts",
    "context",
    "current-context",
    "namespace",
    "token",
    "tokenFile",
    "certificate-authority",
    "certificate-authority-data",
    "client-certificate-data",
    "client-key-data",
    "insecure-skip-tls-verify",
    "exec",
    "auth-provider",
    "username",
    "password",
    "https://127.0.0.1:6443",
    "sidecars",
    "xds",
    "streams_per_channel",
    "delta",
    "gateways",
    "name",
    "region",
    "zone",
    "node_ip",
    "pod_cidr",
    "service_cidr",
    "host_pod_cidr",
    "host_service_cidr",
    "app",
    "198.18.1.0/24",
    "Infinity",
    "NaN",
)
"""Keys and values the loaders compare against, for the mutator."""


class _NoPlugins:
    """What the client library finds instead of a credential plugin or an OIDC refresh."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise config_exception.ConfigException("credential plugins are not run by the fuzzer")


async def _no_google(*args: Any, **kwargs: Any) -> Any:
    raise config_exception.ConfigException("credential plugins are not run by the fuzzer")


@contextlib.contextmanager
def sandboxed_kubeconfig() -> Iterator[None]:
    """Disables, for the block, what a kubeconfig could make the client run or fetch (see
    NOTE above)."""
    stubs = {
        "ExecProvider": _NoPlugins,
        "OpenIDRequestor": _NoPlugins,
        "google_auth_credentials": _no_google,
    }
    originals = {name: getattr(kube_config, name) for name in stubs}
    for name, stub in stubs.items():
        setattr(kube_config, name, stub)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(kube_config, name, original)


class Files:
    """A private directory the inputs are written to (removed at exit)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="navigator-fuzz-config-"))

    def fresh(self, name: str) -> Path:
        path = self.root / name
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return path

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


async def check_kubeconfig(path: Path, context: str | None) -> bool:
    """True if the client was made (and closed)."""
    try:
        api = await informer.KubeApi.from_kubeconfig(path, context)
    except informer.KubeConfigError as exc:
        assert "\n" not in str(exc), f"not one line: {exc!s}"
        return False
    finally:
        # NOTE: the library writes inline certificates to temporary files, kept for the
        # process; a fuzzer makes many.
        kube_config._cleanup_temp_files()  # type: ignore[no-untyped-call]
    await api.close()
    return True


def check_manifests(source: Path) -> int | None:
    st = store.Store()
    try:
        return kubeapi_server.load_manifests(st, source)
    except (errors.ApiError, OSError, yaml.YAMLError):
        return None


def check_topology(examples: Path) -> lab_main.Topology | None:
    try:
        return lab_main.load_topology(examples)
    except lab_main.LabError:
        return None


def check_bench_spec(path: Path) -> bool:
    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        try:
            sidecars.parse_args(["--spec", str(path), "--report", "127.0.0.1:1"])
        except SystemExit as exc:
            assert exc.code == 2, exc.code
            return False
    return True


@functools.cache
def _files() -> Files:
    files = Files()
    atexit.register(files.close)
    return files


@functools.cache
def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()


def test_one_input(data: bytes) -> None:
    try:
        one_input(data)
    except Exception as exc:
        if harness.open_issue(exc) is None:
            raise


def one_input(data: bytes) -> None:
    flags, frames = harness.split_frames(data)
    files = _files()
    mode = flags % 4
    if mode == 0:
        path = files.fresh("kubeconfig")
        path.write_bytes(frames[0][1] if frames else b"")
        context = frames[1][1].decode("utf-8", "replace") if len(frames) > 1 else None
        with sandboxed_kubeconfig():
            _loop().run_until_complete(check_kubeconfig(path, context))
    elif mode == 1:
        folder = files.fresh("manifests")
        folder.mkdir()
        for i, (control, payload) in enumerate(frames):
            (folder / f"{i:03d}{'.json' if control & 1 else '.yaml'}").write_bytes(payload)
        check_manifests(folder)
    elif mode == 2:
        examples = files.fresh("examples")
        for cluster in ("east", "west"):
            (examples / cluster).mkdir(parents=True)
        (examples / "lab.yaml").write_bytes(frames[0][1] if frames else b"")
        for i, (control, payload) in enumerate(frames[1:]):
            cluster = "west" if control & 1 else "east"
            (examples / cluster / f"{i:03d}.yaml").write_bytes(payload)
        check_topology(examples)
    else:
        path = files.fresh("spec.json")
        path.write_bytes(frames[0][1] if frames else b"")
        check_bench_spec(path)


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)
    harness.run(test_one_input, mutator=harness.frames_mutator(EXTRA))
