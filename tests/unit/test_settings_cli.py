"""``navigator weight`` against a real etcd: show, drain, reset, and refuse a typo."""

from __future__ import annotations

import asyncio
import json

import pytest

from coordinator import etcd as etcd_mod
from navigator import keys, model, weights


def _seed(url: str) -> None:
    async def seed() -> None:
        async with etcd_mod.Etcd(etcd_mod.parse_endpoints(url)) as etcd:
            await etcd.put(keys.synced_key(model.ClusterName("east")), b"{}")
            await etcd.put(keys.synced_key(model.ClusterName("west")), b"{}")

    asyncio.run(seed())


def test_drain_show_and_reset(etcd_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _seed(etcd_url)
    assert weights.main(["--etcd", etcd_url, "west", "0"]) == 0
    assert "west: weight 0 (drained)" in capsys.readouterr().out
    assert weights.main(["--etcd", etcd_url, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"east": 100, "west": 0}
    assert weights.main(["--etcd", etcd_url, "west", "--reset"]) == 0
    capsys.readouterr()
    assert weights.main(["--etcd", etcd_url, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"east": 100, "west": 100}


def test_unknown_cluster_is_refused_unless_forced(
    etcd_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(etcd_url)
    assert weights.main(["--etcd", etcd_url, "wset", "0"]) == 2
    err = capsys.readouterr().err
    assert "no watcher has synced cluster 'wset'" in err
    assert len(err.strip().splitlines()) == 1
    assert weights.main(["--etcd", etcd_url, "--force", "north", "50"]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["east"], id="no-weight"),
        pytest.param(["east", "5", "--reset"], id="weight-and-reset"),
        pytest.param(["east", "-1"], id="negative"),
        pytest.param(["east", str(model.MAX_WEIGHT + 1)], id="too-large"),
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        weights.main(["--etcd", "127.0.0.1:1", *argv])
    assert exc.value.code == 2


def test_tracing_set_show_off(etcd_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from navigator import tracing

    assert tracing.main(["--etcd", etcd_url, "zipkin", "zipkin.tracing:9411"]) == 0
    capsys.readouterr()
    assert tracing.main(["--etcd", etcd_url]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "provider": "zipkin",
        "collector": "zipkin.tracing:9411",
        "sampling": 1.0,
    }
    assert tracing.main(["--etcd", etcd_url, "off"]) == 0
    capsys.readouterr()
    assert tracing.main(["--etcd", etcd_url]) == 0
    assert json.loads(capsys.readouterr().out) is None
    with pytest.raises(SystemExit):
        tracing.main(["--etcd", etcd_url, "zipkin", "no-port"])
