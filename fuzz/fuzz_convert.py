"""Fuzz target: Kubernetes objects (and the annotations translation reads) → model → Envoy.

What a watcher and a translator do with what the API server returns: ``convert.identity``
and ``convert.convert`` for every ``model.Kind`` (documented error: ``ConversionError``),
the model's canonical JSON (the watcher's etcd value) and back, then the pure translation
``translate.translate`` of every object that converted (bad input must come out as
diagnostics: policy annotations, canary releases, gateways and ingresses included).

Input: JSON. A list of objects, one object, or ``{"objects": [...], "weights": {...},
"tracing": {...}}`` (cluster weights and the tracing setting, as etcd holds them). The
object at index ``i`` belongs to cluster ``east`` or ``west`` by the parity of ``i``; each is
converted as every kind, and what converts is translated (the last object of an identity
wins, as in etcd).

Run: ``python fuzz/fuzz_convert.py [libFuzzer flags] DIR`` with DIR a copy of
``fuzz/corpus/convert`` (libFuzzer adds what it finds to DIR; see fuzz/README.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import harness

with harness.instrumented(__name__):
    from navigator import keys, model, snapshot
    from navigator.watcher import convert
    from shards import translate

CLUSTERS = (model.ClusterName("east"), model.ClusterName("west"))

EXTRA = (
    *harness.K8S_KINDS,
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "IPv4",
    "IPv6",
    "FQDN",
    "Prefix",
    "Exact",
    "ImplementationSpecific",
    "kubernetes.io/service-name",
    "kubernetes.io/h2c",
    "kubernetes.io/ingress.class",
    "topology.kubernetes.io/zone",
    "navigator.avito.ru/",
    "ring-hash",
    "maglev",
    "least-request",
    "5xx,reset",
    "session;ttl=1h",
    "/healthz",
)
"""Values the converters and translation compare against, for the mutator."""


@dataclasses.dataclass
class Outcome:
    converted: dict[keys.StateKey, model.Object]
    """What converted, by identity (the last object of an identity wins)."""
    rejected: int
    result: translate.Result | None


def convert_all(objects: Sequence[Any]) -> tuple[dict[keys.StateKey, model.Object], int]:
    converted: dict[keys.StateKey, model.Object] = {}
    rejected = 0
    for i, raw in enumerate(objects):
        cluster = CLUSTERS[i % 2]
        for kind in model.Kind:
            ident = None
            if isinstance(raw, Mapping):
                # NOTE: identity takes a Mapping, as a list or watch hands out; convert checks.
                with contextlib.suppress(convert.ConversionError):
                    ident = convert.identity(cluster, kind, raw)
            try:
                obj = convert.convert(cluster, kind, raw)
            except convert.ConversionError:
                rejected += 1
                continue
            assert ident is not None, f"{kind}: converted, yet identity refused it"
            assert convert.identity_of(obj) == ident, (ident, convert.identity_of(obj))
            body = model.encode(obj)
            assert model.decode(kind, body) == obj, f"{kind}: the model's JSON does not round-trip"
            converted[ident] = obj
    return converted, rejected


def run_translation(
    objects: Sequence[model.Object],
    *,
    weights: Mapping[model.ClusterName, int] | None = None,
    tracing: model.Tracing | None = None,
) -> translate.Result:
    result = translate.translate(
        objects, CLUSTERS, translate.Options(tracing=tracing), weights=weights
    )
    for snap in result.apps.values():
        # NOTE: what the runner writes to etcd and the front-ends decode.
        snapshot.decode_app(snapshot.encode_app(snap))
    for diags in result.diagnostics.values():
        for d in diags:
            assert isinstance(d, translate.Diagnostic) and d.reason, d
    return result


def _options(doc: Mapping[str, Any]) -> tuple[dict[model.ClusterName, int], model.Tracing | None]:
    weights: dict[model.ClusterName, int] = {}
    raw_weights = doc.get("weights")
    if isinstance(raw_weights, dict):
        for cluster, value in raw_weights.items():
            try:
                weight = model.decode_weight(json.dumps({"weight": value}).encode())
            except model.DecodeError:
                continue
            weights[model.ClusterName(cluster)] = weight
    tracing = None
    if "tracing" in doc:
        try:
            tracing = model.decode_tracing(json.dumps(doc["tracing"]).encode())
        except model.DecodeError:
            tracing = None
    return weights, tracing


def process(value: Any) -> Outcome:
    weights: dict[model.ClusterName, int] = {}
    tracing = None
    if isinstance(value, dict) and isinstance(value.get("objects"), list):
        objects = value["objects"]
        weights, tracing = _options(value)
    elif isinstance(value, list):
        objects = value
    else:
        objects = [value]
    converted, rejected = convert_all(objects)
    result = run_translation(list(converted.values()), weights=weights, tracing=tracing)
    return Outcome(converted=converted, rejected=rejected, result=result)


def test_one_input(data: bytes) -> None:
    ok, value = harness.json_value(data)
    if ok:
        process(value)


if __name__ == "__main__":
    from shards import policy

    logging.disable(logging.CRITICAL)
    harness.run(test_one_input, mutator=harness.json_mutator(EXTRA + policy.ANNOTATIONS))
