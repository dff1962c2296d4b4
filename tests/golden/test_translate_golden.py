"""Golden files for translation: one YAML file per case holds the input and the expected output.

Run ``pytest tests/golden --update-golden`` to rewrite the ``output`` of every case from the
current code, then review the diff: it is the change in what sidecars receive.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from navigator import model, snapshot
from shards import translate

CASES = sorted((Path(__file__).parent / "translate").glob("*.yaml"))


def _objects(raw: list[dict[str, Any]]) -> list[model.Object]:
    """Input objects are written as the model's JSON plus a ``kind`` field."""
    return [
        model.decode(model.Kind(item["kind"]), json.dumps({**item, "kind": None}).encode())
        for item in raw
    ]


def render(result: translate.Result) -> dict[str, Any]:
    apps: dict[str, Any] = {}
    for (app, cluster), snap in sorted(result.apps.items()):
        apps[f"{app}@{cluster}"] = {
            "version": snap.version,
            **{
                snapshot.SHORT_NAMES[type_url]: [
                    snapshot.resource_to_dict(type_url, r.body) for r in snap.resources[type_url]
                ]
                for type_url in snapshot.TYPE_URLS
                if type_url in snap.resources
            },
            "eds": list(snap.endpoints),
        }
    return {
        "apps": apps,
        "endpoints": {
            f"{name}/{variant}": snapshot.resource_to_dict(snapshot.ENDPOINT, body)
            for (name, variant), body in sorted(result.endpoints.items())
        },
        "diagnostics": {
            app or "_mesh": [
                {"object": d.object, "reason": d.reason, "severity": d.severity.value}
                for d in diags
            ]
            for app, diags in sorted(result.diagnostics.items())
            if diags
        },
    }


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden(path: Path, update_golden: bool) -> None:
    case = yaml.safe_load(path.read_text())
    objects = _objects(case["input"]["objects"])
    clusters = [model.ClusterName(c) for c in case["input"]["clusters"]]
    weights = {model.ClusterName(c): w for c, w in case["input"].get("weights", {}).items()}
    options = translate.Options()
    if "tracing" in case["input"]:
        options = translate.Options(
            tracing=model.decode_tracing(json.dumps(case["input"]["tracing"]).encode())
        )
    got = render(translate.translate(objects, clusters, options, weights=weights))
    if update_golden:
        case["output"] = got
        path.write_text(yaml.safe_dump(case, sort_keys=False, width=100))
        return
    assert "output" in case, f"{path.name} has no output yet: run with --update-golden"
    assert got == case["output"]


def test_translation_is_deterministic_under_input_order() -> None:
    case = yaml.safe_load(CASES[0].read_text())
    objects = _objects(case["input"]["objects"])
    clusters = [model.ClusterName(c) for c in case["input"]["clusters"]]
    forward = translate.translate(objects, clusters)
    backward = translate.translate(list(reversed(objects)), list(reversed(clusters)))
    assert render(forward) == render(backward)
