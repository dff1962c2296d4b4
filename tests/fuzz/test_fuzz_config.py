"""The configuration files commands read (kubeconfigs, ``kube-api --load`` manifests, the
lab's topology, the benchmark's sidecar spec): properties, the regressions fuzzing found, and
a bounded run of ``fuzz/fuzz_config.py``."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fuzz_config
import fuzz_props
import harness
import pytest
import yaml
from fuzz_props import TEXT, json_values, maybe
from hypothesis import given
from hypothesis import strategies as st

from navigator.kubeapi import errors, store
from navigator.kubeapi import server as kubeapi_server
from navigator.lab import main as lab_main
from navigator.watcher import informer


@pytest.fixture(scope="module")
def files() -> Iterator[fuzz_config.Files]:
    found = fuzz_config.Files()
    try:
        with fuzz_config.sandboxed_kubeconfig():
            yield found
    finally:
        found.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


def _tolerating_open_issues(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except Exception as exc:
        if harness.open_issue(exc) is None:
            raise
        return None


# --- kubeconfig ------------------------------------------------------------------------------

B64 = st.one_of(st.sampled_from(["", "Zm9v", "!!", base64.b64encode(b"x" * 40).decode()]), TEXT)
CLUSTER = st.fixed_dictionaries(
    {"server": maybe(st.sampled_from(["http://127.0.0.1:6443", "https://[::1]:1", "", "x"]))},
    optional={
        "certificate-authority-data": maybe(B64),
        "insecure-skip-tls-verify": maybe(st.booleans()),
        "tls-server-name": maybe(TEXT),
        "certificate-authority": maybe(st.sampled_from(["/nonexistent", "/dev/null", ""])),
    },
)
USER = st.fixed_dictionaries(
    {},
    optional={
        "token": maybe(TEXT),
        "username": maybe(TEXT),
        "password": maybe(TEXT),
        "client-certificate-data": maybe(B64),
        "client-key-data": maybe(B64),
        "tokenFile": maybe(st.sampled_from(["/nonexistent", "/dev/null"])),
        "exec": maybe(st.fixed_dictionaries({"command": TEXT, "apiVersion": TEXT})),
        "auth-provider": maybe(
            st.fixed_dictionaries({"name": st.sampled_from(["oidc", "gcp", "azure", "x"])})
        ),
    },
)
NAMED = st.sampled_from(["a", "b", ""])
KUBECONFIGS = st.fixed_dictionaries(
    {
        "clusters": maybe(
            st.lists(
                st.fixed_dictionaries({"name": maybe(NAMED), "cluster": maybe(CLUSTER)}), max_size=2
            )
        ),
        "users": maybe(
            st.lists(st.fixed_dictionaries({"name": maybe(NAMED), "user": maybe(USER)}), max_size=2)
        ),
        "contexts": maybe(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": maybe(NAMED),
                        "context": maybe(
                            st.fixed_dictionaries(
                                {"cluster": maybe(NAMED), "user": maybe(NAMED)},
                                optional={"namespace": maybe(TEXT)},
                            )
                        ),
                    }
                ),
                max_size=2,
            )
        ),
    },
    optional={"current-context": maybe(NAMED), "apiVersion": maybe(TEXT), "kind": maybe(TEXT)},
)


@fuzz_props.bounded(120)
@given(st.one_of(KUBECONFIGS, json_values()), st.one_of(st.none(), NAMED))
def test_a_kubeconfig_makes_a_client_or_a_kubeconfig_error(
    files: fuzz_config.Files, loop: asyncio.Runner, config: Any, context: str | None
) -> None:
    path = files.fresh("kubeconfig")
    path.write_text(yaml.safe_dump(config))
    made = _tolerating_open_issues(loop.run, fuzz_config.check_kubeconfig(path, context))
    if made and isinstance(config, dict):
        # A client is made only from a kubeconfig that names its server.
        assert config.get("clusters")


def test_the_labs_kubeconfig_makes_a_client(files: fuzz_config.Files, loop: asyncio.Runner) -> None:
    path = files.fresh("kubeconfig")
    kubeapi_server.write_kubeconfig(path, {"east": "http://127.0.0.1:1", "west": "http://[::1]:2"})
    assert loop.run(fuzz_config.check_kubeconfig(path, "west"))
    assert not loop.run(fuzz_config.check_kubeconfig(path, "north"))


# --- manifests, topology, bench spec ---------------------------------------------------------

EXAMPLE_DOCS = [
    yaml.safe_dump(doc)
    for path in sorted((harness.EXAMPLES / "east").glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc
]
MANIFEST_DOCS = st.one_of(
    st.sampled_from(EXAMPLE_DOCS),
    json_values().map(yaml.safe_dump),
    st.lists(json_values(), max_size=3).map(
        lambda items: yaml.safe_dump({"kind": "List", "items": items})
    ),
)


@fuzz_props.bounded(150)
@given(st.lists(st.tuples(st.booleans(), MANIFEST_DOCS), min_size=1, max_size=4))
def test_manifests_load_or_fail_as_kube_api_reports(
    files: fuzz_config.Files, docs: list[tuple[bool, str]]
) -> None:
    folder = files.fresh("manifests")
    folder.mkdir()
    for i, (as_json, text) in enumerate(docs):
        body = json.dumps(yaml.safe_load(text)) if as_json else text
        (folder / f"{i:03d}{'.json' if as_json else '.yaml'}").write_text(body)
    _tolerating_open_issues(fuzz_config.check_manifests, folder)


SPECS = st.fixed_dictionaries(
    {"name": maybe(st.sampled_from(["east", "west", "north"]))},
    optional={
        k: maybe(TEXT)
        for k in (
            "region",
            "zone",
            "node_ip",
            "pod_cidr",
            "service_cidr",
            "host_pod_cidr",
            "host_service_cidr",
        )
    },
)
TOPOLOGIES = st.fixed_dictionaries(
    {"clusters": maybe(st.lists(SPECS, max_size=2))},
    optional={
        "sidecars": maybe(
            st.lists(
                st.fixed_dictionaries(
                    {"app": maybe(TEXT), "cluster": maybe(TEXT)},
                    optional={"xds": maybe(st.sampled_from(["sotw", "delta", "x"]))},
                ),
                max_size=2,
            )
        ),
        "gateways": maybe(
            st.lists(
                st.fixed_dictionaries(
                    {"namespace": maybe(TEXT), "name": maybe(TEXT), "cluster": maybe(TEXT)}
                ),
                max_size=2,
            )
        ),
    },
)


@fuzz_props.bounded(150)
@given(st.one_of(TOPOLOGIES, json_values()))
def test_a_topology_loads_or_is_a_lab_error(files: fuzz_config.Files, raw: Any) -> None:
    examples = files.fresh("examples")
    for cluster in ("east", "west"):
        (examples / cluster).mkdir(parents=True)
    (examples / "lab.yaml").write_text(yaml.safe_dump(raw))
    topology = _tolerating_open_issues(fuzz_config.check_topology, examples)
    if topology is not None:
        assert {s.cluster for s in topology.sidecars} <= {c.name for c in topology.clusters}


@fuzz_props.bounded(150)
@given(
    st.one_of(
        st.fixed_dictionaries(
            {
                "xds": maybe(TEXT),
                "sidecars": maybe(
                    st.lists(
                        st.dictionaries(
                            st.sampled_from(["id", "app", "cluster", "zone"]),
                            json_values(max_leaves=2),
                        ),
                        max_size=2,
                    )
                ),
            },
            optional={
                "streams_per_channel": maybe(st.integers()),
                "delta": json_values(max_leaves=2),
            },
        ),
        json_values(),
    )
)
def test_a_bench_spec_parses_or_is_a_parse_error(files: fuzz_config.Files, raw: Any) -> None:
    path = files.fresh("spec.json")
    path.write_text(json.dumps(raw))
    _tolerating_open_issues(fuzz_config.check_bench_spec, path)


@fuzz_props.bounded(150)
@given(st.integers(0, 255), st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=60))))
def test_arbitrary_bytes_as_config_files(flags: int, frames: list[harness.Frame]) -> None:
    if flags % 4 == 0:
        return  # NOTE: the kubeconfig group runs on its own loop (the properties above).
    fuzz_config.test_one_input(harness.join_frames(flags, frames))


# --- regressions -----------------------------------------------------------------------------


def test_a_manifest_list_item_that_is_not_an_object_is_an_api_error(tmp_path: Path) -> None:
    # NOTE: found by fuzz_config: store.create took it (AttributeError); now a 400.
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump({"kind": "List", "items": [5]}))
    with pytest.raises(errors.ApiError):
        kubeapi_server.load_manifests(store.Store(), path)


LAB_CA = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [
        {
            "name": "c",
            "cluster": {
                "server": "https://127.0.0.1:6443",
                "certificate-authority-data": base64.b64encode(b"not a certificate").decode(),
            },
        }
    ],
    "users": [{"name": "u", "user": {"token": "t"}}],
    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    "current-context": "c",
}


def test_a_kubeconfig_whose_ca_is_not_pem_is_a_kubeconfig_error(
    files: fuzz_config.Files, loop: asyncio.Runner
) -> None:
    # NOTE: found by fuzz_config: ssl.SSLError ([X509: NO_CERTIFICATE_OR_CRL_FOUND]) escaped
    # the watcher's start instead of its one-line kubeconfig error.
    path = files.fresh("kubeconfig")
    path.write_text(yaml.safe_dump(LAB_CA))
    with pytest.raises(informer.KubeConfigError):
        loop.run(informer.KubeApi.from_kubeconfig(path))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        pytest.param("bad.json", b"{", id="not-json"),
        pytest.param("bad.yaml", b"\xff", id="not-utf8"),
        pytest.param("list.yaml", b"- a\n", id="document-not-an-object"),
        pytest.param("items.yaml", b"kind: List\nitems: 5\n", id="items-not-a-list"),
    ],
)
def test_a_bad_manifest_file_is_an_api_error(tmp_path: Path, name: str, content: bytes) -> None:
    # NOTE: found by fuzz_config.
    path = tmp_path / name
    path.write_bytes(content)
    try:
        kubeapi_server.load_manifests(store.Store(), path)
    except errors.ApiError:
        return
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}") from exc
    raise AssertionError("loaded")


@pytest.mark.parametrize(
    ("lab_yaml", "manifest"),
    [
        pytest.param(b"\xff", None, id="lab-yaml-not-utf8"),
        pytest.param(None, b"\xff", id="manifest-not-utf8"),
        pytest.param(
            yaml.safe_dump(
                {
                    "clusters": [
                        {
                            "name": ["east"],
                            "region": "r",
                            "zone": "z",
                            "node_ip": "1.2.3.4",
                            "pod_cidr": "10.0.0.0/24",
                            "service_cidr": "10.1.0.0/24",
                            "host_pod_cidr": "127.0.0.0/24",
                            "host_service_cidr": "127.1.0.0/24",
                        }
                    ]
                }
            ).encode(),
            None,
            id="cluster-name-a-list",
        ),
    ],
)
def test_a_bad_topology_is_a_lab_error(
    tmp_path: Path, lab_yaml: bytes | None, manifest: bytes | None
) -> None:
    # NOTE: found by fuzz_config.
    examples = tmp_path / "examples"
    for cluster in ("east", "west"):
        (examples / cluster).mkdir(parents=True)
    (examples / "lab.yaml").write_bytes(lab_yaml or (harness.EXAMPLES / "lab.yaml").read_bytes())
    if manifest is not None:
        (examples / "east" / "bad.yaml").write_bytes(manifest)
    try:
        lab_main.load_topology(examples)
    except lab_main.LabError:
        return
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}") from exc
    raise AssertionError("loaded")


def test_a_bench_spec_with_infinite_streams_is_a_parse_error(tmp_path: Path) -> None:
    # NOTE: found by the fuzz_config properties.
    path = tmp_path / "spec.json"
    path.write_text('{"xds": "127.0.0.1:1", "sidecars": [], "streams_per_channel": Infinity}')
    try:
        assert not fuzz_config.check_bench_spec(path)
    except OverflowError as exc:
        raise AssertionError(repr(exc)) from exc


def test_fuzzer_runs_clean(tmp_path: Path) -> None:
    fuzz_props.assert_clean(fuzz_props.fuzz("config", tmp_path), "config")
