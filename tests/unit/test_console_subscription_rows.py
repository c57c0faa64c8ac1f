"""What the console shows of a subscriber's endpoint: never credentials carried in the URL."""

from __future__ import annotations

import pytest

from gateway.transports.http.console.subscription_rows import endpoint_shown


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        ("https://pharmacy.example/hooks/gw", "https://pharmacy.example/hooks/gw"),
        # user and password in the authority
        ("https://svc:s3cret@pharmacy.example:8443/h", "https://pharmacy.example:8443/h"),
        # a token in the query or the fragment
        ("https://pharmacy.example/h?token=abc#frag", "https://pharmacy.example/h"),
        ("http://[::1]:9/h", "http://[::1]:9/h"),
        (None, ""),
    ],
)
def test_the_endpoint_is_shown_without_credentials(endpoint: str | None, shown: str) -> None:
    assert endpoint_shown(endpoint) == shown
