"""/metrics stays small whatever clients send, and /docs loads nothing from the internet."""

from __future__ import annotations

import random
import re
import string

import httpx

from gateway.transports.http.observability import KNOWN_METHODS

# Bytes. The label sets are bounded (8 methods x the app's route templates x statuses), not the requests:
# about 80 KB after the requests below, where every method name and path used to add its own series.
METRICS_BOUND = 128 * 1024


VOCABULARY = {"_history", "coverage", "messages", "senders", "Observation", "Spaceship"}


def _random_request(rng: random.Random) -> tuple[str, str]:
    method = "".join(rng.choices(string.ascii_uppercase + "-_", k=rng.randint(3, 16)))
    if rng.random() < 0.2:
        method = rng.choice(sorted(KNOWN_METHODS))
    segments = [
        rng.choice(["fhir", "hl7v2", "auth", "docs", "metrics", "x"]),
        rng.choice(["Patient", "Observation", "Spaceship", "messages", "senders", "token"]),
        "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(1, 20))),
        rng.choice(["_history", "coverage", "$status", "y"]),
    ]
    return method, "/" + "/".join(segments[: rng.randint(1, 4)])


async def test_random_methods_and_paths_leave_metrics_small(api: httpx.AsyncClient) -> None:
    rng = random.Random(20240301)
    sent: set[str] = set()
    for _ in range(1000):
        method, path = _random_request(rng)
        sent.update(w for w in (method, *path.split("/")) if len(w) >= 8 and w not in VOCABULARY)
        answer = await api.request(method, path)
        assert answer.status_code < 500, (method, path, answer.text[:200])
    metrics = (await api.get("/metrics")).text
    assert len(metrics.encode()) < METRICS_BOUND
    methods = set(re.findall(r'method="([^"]*)"', metrics))
    assert "other" in methods and methods <= KNOWN_METHODS | {"other"}
    routes = set(re.findall(r'route="([^"]*)"', metrics))
    assert "/fhir/{rtype}/{rid}" in routes and "unmatched" in routes  # templates, never the paths
    assert not [word for word in sent if word in metrics]


def _asset_urls(page: str) -> list[str]:
    """Every URL the page loads or points at: src/href attributes and the spec url given to the UI."""
    attributes = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)
    spec = re.findall(r"""url['"]?\s*:\s*['"]([^'"]+)['"]""", page)
    return attributes + spec


async def test_docs_pages_load_only_local_assets(api: httpx.AsyncClient) -> None:
    for page_url in ("/docs", "/redoc"):
        page = await api.get(page_url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text
        urls = _asset_urls(page.text)
        assert any(u.endswith(".js") for u in urls), urls
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url
            loaded = await api.get(url)
            assert loaded.status_code == 200, url
            assert len(loaded.content) > 0
    swagger = (await api.get("/docs")).text
    assert '"validatorUrl": null' in swagger  # the UI would otherwise send the spec's URL to a validator
