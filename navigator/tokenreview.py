"""The Kubernetes side of sidecar authentication: each cluster's TokenReview API.

``navigator xds --authn token`` checks every sidecar's service-account token with the
TokenReview API of the cluster the sidecar names (``navigator.xds.authn``). This module makes
those reviewers with the official client, so that the front-end's own package does not
depend on Kubernetes: it only sees the ``authn.Reviewer`` protocol. ``navigator.frontend``
puts the two together.

A front-end reaches each cluster's API through a kubeconfig whose contexts are named after
the clusters (``--review-kubeconfig``; ``--review-context CLUSTER=CONTEXT`` when they are not),
and its own cluster through its pod's service account (``--review-in-cluster CLUSTER``). In
a cluster its service account needs ``create`` on ``tokenreviews.authentication.k8s.io``
(``deploy/base/rbac.yaml``), nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import tenacity
import yaml
from kubernetes.aio import client as kclient
from kubernetes.aio.config import kube_config

from navigator.watcher import informer
from navigator.xds import authn

log = logging.getLogger(__name__)


class KubeReviewer:
    """One cluster's TokenReview API over the official client; retries transient failures."""

    def __init__(
        self, api_client: kclient.ApiClient, cluster: str, *, attempts: int = 3, timeout: float = 5
    ) -> None:
        self.cluster = cluster
        self._client = api_client
        self._api = kclient.AuthenticationV1Api(api_client)
        self._attempts = attempts
        self._timeout = timeout

    async def close(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]

    async def review(self, token: str, audiences: Sequence[str]) -> authn.Review:
        body = kclient.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=kclient.V1TokenReviewSpec(token=token, audiences=list(audiences)),
        )
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(_transient),
            stop=tenacity.stop_after_attempt(self._attempts),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=1.0),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    answer: Any = await self._api.create_token_review(
                        body, _request_timeout=self._timeout
                    )
        except Exception as exc:
            raise authn.ReviewUnavailable(
                f"TokenReview in cluster {self.cluster}: {_describe(exc)}"
            ) from exc
        status = answer.status
        if status is None:
            return authn.Review(authenticated=False, error="empty TokenReview status")
        user = status.user
        extra = {k: tuple(v or ()) for k, v in ((user.extra if user else None) or {}).items()}
        return authn.Review(
            authenticated=bool(status.authenticated),
            username=(user.username or "") if user else "",
            audiences=tuple(status.audiences or ()),
            extra=extra,
            error=status.error or "",
        )


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
        return True
    status = getattr(exc, "status", None)
    return isinstance(exc, kclient.ApiException) and (status == 429 or (status or 0) >= 500)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The front-end's options for reaching each cluster's TokenReview API."""
    parser.add_argument(
        "--review-kubeconfig",
        metavar="FILE",
        help="kubeconfig of the clusters whose sidecars' tokens are reviewed; one context per "
        "cluster, named after it",
    )
    parser.add_argument(
        "--review-context",
        action="append",
        default=[],
        metavar="CLUSTER=CONTEXT",
        help="the kubeconfig context of CLUSTER, when it is not named after it (repeatable; "
        "given at all, only the clusters named are reviewed)",
    )
    parser.add_argument(
        "--review-in-cluster",
        metavar="CLUSTER",
        help="review CLUSTER's tokens through this pod's own service account",
    )


def contexts(path: str | Path, pairs: Sequence[str]) -> dict[str, str]:
    """Cluster → kubeconfig context: the ``CLUSTER=CONTEXT`` pairs, else every context of the
    file under its own name. Raises ValueError (one line) on a bad pair or file."""
    if pairs:
        out: dict[str, str] = {}
        for pair in pairs:
            cluster, sep, context = pair.partition("=")
            if not sep or not cluster or not context:
                raise ValueError(f"--review-context {pair!r}: expected CLUSTER=CONTEXT")
            out[cluster] = context
        return out
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"kubeconfig {path}: {_describe(exc)}") from exc
    found = doc.get("contexts") if isinstance(doc, dict) else None
    names = [c.get("name") for c in found or [] if isinstance(c, dict)]
    named = [n for n in names if isinstance(n, str) and n]
    if not named or len(named) != len(names):
        raise ValueError(f"kubeconfig {path}: no named contexts")
    return {n: n for n in named}


@contextlib.asynccontextmanager
async def reviewers(args: argparse.Namespace) -> AsyncIterator[Mapping[str, authn.Reviewer]]:
    """The reviewers the options name, closed on exit. Raises ValueError (one line) when the
    options or a kubeconfig are unusable, before anything is asked."""
    made: dict[str, KubeReviewer] = {}
    try:
        if args.review_kubeconfig:
            for cluster, context in contexts(args.review_kubeconfig, args.review_context).items():
                configuration = kclient.Configuration()
                try:
                    await kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                        config_file=str(args.review_kubeconfig),
                        context=context,
                        client_configuration=configuration,
                        persist_config=False,
                    )
                except Exception as exc:  # NOTE: yaml, I/O, missing keys: "cannot use it".
                    raise ValueError(
                        f"kubeconfig {args.review_kubeconfig} context {context}: {_describe(exc)}"
                    ) from exc
                made[cluster] = KubeReviewer(kclient.ApiClient(configuration), cluster)
        elif args.review_context:
            raise ValueError("--review-context needs --review-kubeconfig")
        if args.review_in_cluster:
            try:
                configuration = informer.in_cluster_configuration()
            except informer.KubeConfigError as exc:
                raise ValueError(str(exc)) from exc
            made[args.review_in_cluster] = KubeReviewer(
                kclient.ApiClient(configuration), args.review_in_cluster
            )
        if not made:
            raise ValueError(
                "--authn token needs --review-kubeconfig or --review-in-cluster: no cluster "
                "to review tokens with"
            )
        log.info("token review configured", extra={"clusters": sorted(made)})
        yield made
    finally:
        for reviewer in made.values():
            await reviewer.close()
