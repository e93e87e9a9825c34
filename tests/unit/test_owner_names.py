"""Whose jobs a hub token's requests are: a user's name never passes for a service's, as in Dask Gateway."""

import pytest

from science_gateway.auth import owner_name
from science_gateway.results_store import owner_prefix


@pytest.mark.parametrize(
    ("model", "owner"),
    [
        ({"kind": "user", "name": "alice"}, "alice"),
        ({"kind": "service", "name": "science-gateway"}, "service:science-gateway"),
        # A hub user literally named like the service: prefixed, as Dask Gateway prefixes it.
        ({"kind": "user", "name": "service:science-gateway"}, "user:service:science-gateway"),
        ({"kind": "user", "name": "user:alice"}, "user:user:alice"),
        ({"name": "bob"}, "bob"),
    ],
)
def test_each_kind_of_hub_identity_owns_jobs_under_the_name_dask_gateway_gives_it(model: dict, owner: str) -> None:
    assert owner_name(model) == owner


def test_no_two_hub_identities_share_an_owner_or_a_prefix() -> None:
    identities = [
        {"kind": kind, "name": name}
        for kind in ("user", "service")
        for name in ("x", "service:x", "user:x", "user:service:x", "service:user:x")
    ]
    owners = [owner_name(identity) for identity in identities]
    assert len(set(owners)) == len(identities) == 10
    assert len({owner_prefix(owner) for owner in owners}) == 10
