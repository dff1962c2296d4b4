"""``navigator xds``: the front-end (``navigator.xds.server``) with each cluster's
TokenReview client (``navigator.tokenreview``) for ``--authn token``.

The two meet here so that the front-end's package stays free of the Kubernetes client: it
knows snapshots and the ``authn.Reviewer`` protocol, not how either is made.
"""

from __future__ import annotations

from navigator import tokenreview
from navigator.xds import server


def main(argv: list[str] | None = None) -> int:
    return server.main(
        argv, reviewers=tokenreview.reviewers, add_review_arguments=tokenreview.add_arguments
    )
