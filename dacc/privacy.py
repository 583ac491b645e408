"""Who may read a measure's published results (what is published: dacc.publication)."""

from __future__ import annotations

from dacc.tokens import TokenIdentity


def may_read_results(*, owner_org: str, access_public: bool, access_app: bool, token: TokenIdentity) -> bool:
    """Whether `token` may read a measure's published results.

    The owner org may; anyone may when the definition is public; with accessApp, the
    tokens that may send its measures (measure:write) may, being the producing app's
    channel.
    """
    if token.org == owner_org or access_public:
        return True
    return access_app and "measure:write" in token.scopes
