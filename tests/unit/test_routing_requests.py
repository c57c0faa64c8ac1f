"""Reading an R4 Subscriptions Backport Subscription into a SubscriptionSpec, or every problem with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.routing.evaluators import EVALUATORS
from gateway.routing.requests import (
    DEFAULT_MAX_COUNT,
    DEFAULT_TIMEOUT_S,
    MAX_COUNT,
    SECRET_EXTENSION,
    TIMEOUT,
    SubscriptionSpec,
    parse_subscription,
)
from gateway.routing.topics import TopicSet
from gateway.types import JSON, Issue
from tests.factories import SECRET, subscription, topic_url

TOPICS = TopicSet.load(Path(__file__).resolve().parents[2] / "profiles" / "topics", frozenset(EVALUATORS))
ENDPOINT = "https://receiver.example.org/hook"


def _valid(resource: JSON, **kwargs: Any) -> SubscriptionSpec:
    spec, issues = parse_subscription(resource, TOPICS, **kwargs)
    assert issues == []
    assert spec is not None
    return spec


def _issues(resource: JSON) -> list[Issue]:
    spec, issues = parse_subscription(resource, TOPICS)
    assert spec is None
    assert issues, "expected at least one issue"
    assert all(i.severity == "error" and i.is_error for i in issues)
    return issues


def _only_issue(resource: JSON) -> Issue:
    (issue,) = _issues(resource)
    return issue


def _channel_extension(resource: JSON, url: str, **value: Any) -> JSON:
    resource["channel"].setdefault("extension", []).append({"url": url, **value})
    return resource


# --- valid subscriptions ------------------------------------------------------------------------------


def test_full_valid_subscription() -> None:
    resource = subscription(
        "abnormal-lab-result",
        ENDPOINT,
        filters=("patient=Patient/p1", "Observation.code=http://loinc.org|751-8"),
        content="full-resource",
        heartbeat=60,
        max_count=5,
        headers=("Authorization: Bearer abc:def", "X-Tenant:  north "),
    )
    resource["id"] = "sub-1"
    _channel_extension(resource, TIMEOUT, valueUnsignedInt=30)
    spec = _valid(resource, end_us=123)
    assert spec.id == "sub-1"
    assert spec.status == "requested"
    assert spec.topic.id == "abnormal-lab-result"
    assert [(f.parameter, f.keys) for f in spec.filters] == [
        ("patient", frozenset({"patient=Patient/p1"})),
        ("code", frozenset({"code=http://loinc.org|751-8"})),
    ]
    assert (spec.channel, spec.endpoint, spec.payload_type) == (
        "rest-hook",
        ENDPOINT,
        "application/fhir+json",
    )
    assert spec.content == "full-resource"
    assert (spec.heartbeat_s, spec.timeout_s, spec.max_count) == (60, 30, 5)
    # split at the first colon only, both sides trimmed
    assert spec.headers == (("Authorization", "Bearer abc:def"), ("X-Tenant", "north"))
    assert spec.secret == SECRET
    assert spec.end_us == 123


def test_defaults() -> None:
    resource = subscription("medication-order", ENDPOINT)
    del resource["channel"]["_payload"]
    del resource["channel"]["payload"]
    spec = _valid(resource)
    assert spec.content == "id-only"
    assert spec.payload_type == "application/fhir+json"
    assert spec.heartbeat_s is None
    assert spec.timeout_s == DEFAULT_TIMEOUT_S == 10
    assert spec.max_count == DEFAULT_MAX_COUNT == 20
    assert spec.headers == ()
    assert spec.filters == ()
    assert spec.end_us is None
    assert spec.id == ""


def test_rest_hook_needs_a_secret_websocket_does_not() -> None:
    issue = _only_issue(subscription("medication-order", ENDPOINT, secret=None))
    assert issue.expression == ("Subscription.extension",)
    assert issue.code == "required"
    assert SECRET_EXTENSION in issue.diagnostics
    assert _valid(subscription("medication-order", None, channel="websocket", secret=None)).secret is None


@pytest.mark.parametrize("content", ["empty", "id-only", "full-resource"])
def test_content_levels(content: str) -> None:
    assert _valid(subscription("critical-lab-result", ENDPOINT, content=content)).content == content


def test_websocket_needs_no_endpoint() -> None:
    spec = _valid(subscription("pa-status-changed", None, channel="websocket"))
    assert (spec.channel, spec.endpoint) == ("websocket", None)


def test_versioned_topic_url_and_plain_json_payload() -> None:
    resource = subscription("pa-expiring", ENDPOINT, status="active")
    resource["criteria"] = topic_url("pa-expiring") + "|1.0.0"
    resource["channel"]["payload"] = "application/json"
    spec = _valid(resource)
    assert spec.topic.id == "pa-expiring"
    assert spec.payload_type == "application/json"
    assert spec.status == "active"


@pytest.mark.parametrize(("timeout", "max_count"), [(1, 1), (60, 500)])
def test_limits_are_inclusive(timeout: int, max_count: int) -> None:
    resource = subscription("medication-order", ENDPOINT, max_count=max_count)
    _channel_extension(resource, TIMEOUT, valueUnsignedInt=timeout)
    spec = _valid(resource)
    assert (spec.timeout_s, spec.max_count) == (timeout, max_count)


# --- every problem, with its expression ---------------------------------------------------------------


def test_unknown_topic() -> None:
    resource = subscription("abnormal-lab-result", ENDPOINT)
    resource["criteria"] = topic_url("no-such-topic")
    issue = _only_issue(resource)
    assert issue.expression == ("Subscription.criteria",)
    assert issue.code == "not-supported"
    assert "no-such-topic" in issue.diagnostics
    assert topic_url("abnormal-lab-result") in issue.diagnostics  # the known topics are listed


def test_missing_criteria() -> None:
    resource = subscription("abnormal-lab-result", ENDPOINT)
    del resource["criteria"]
    assert _only_issue(resource).expression == ("Subscription.criteria",)


def test_unknown_filter() -> None:
    issue = _only_issue(subscription("abnormal-lab-result", ENDPOINT, filters=("performer=1",)))
    assert issue.expression == ("Subscription.criteria.extension",)
    assert issue.code == "not-supported"
    assert "performer" in issue.diagnostics


def test_filter_without_a_string() -> None:
    resource = subscription("abnormal-lab-result", ENDPOINT, filters=("patient=1",))
    resource["_criteria"]["extension"][0] = {"url": resource["_criteria"]["extension"][0]["url"]}
    assert _only_issue(resource).expression == ("Subscription.criteria.extension",)


def test_unsupported_channel_type() -> None:
    issue = _only_issue(subscription("abnormal-lab-result", ENDPOINT, channel="email"))
    assert issue.expression == ("Subscription.channel.type",)
    assert issue.code == "not-supported"
    assert "'email'" in issue.diagnostics


def test_rest_hook_needs_an_endpoint() -> None:
    issue = _only_issue(subscription("abnormal-lab-result", None))
    assert issue.expression == ("Subscription.channel.endpoint",)
    assert issue.code == "required"


def test_bad_payload_mime_type() -> None:
    resource = subscription("abnormal-lab-result", ENDPOINT)
    resource["channel"]["payload"] = "application/fhir+xml"
    issue = _only_issue(resource)
    assert issue.expression == ("Subscription.channel.payload",)
    assert "application/fhir+xml" in issue.diagnostics


def test_bad_content_code() -> None:
    issue = _only_issue(subscription("abnormal-lab-result", ENDPOINT, content="everything"))
    assert issue.expression == ("Subscription.channel.payload.extension",)
    assert "'everything'" in issue.diagnostics


@pytest.mark.parametrize("status", ["bogus", None])
def test_bad_status(status: str | None) -> None:
    resource = subscription("abnormal-lab-result", ENDPOINT)
    resource["status"] = status
    assert _only_issue(resource).expression == ("Subscription.status",)


def test_heartbeat_zero() -> None:
    issue = _only_issue(subscription("abnormal-lab-result", ENDPOINT, heartbeat=0))
    assert issue.expression == ("Subscription.channel.extension",)
    assert "heartbeat" in issue.diagnostics


@pytest.mark.parametrize("timeout", [0, 61, "10"])
def test_bad_timeout(timeout: Any) -> None:
    resource = _channel_extension(
        subscription("abnormal-lab-result", ENDPOINT), TIMEOUT, valueUnsignedInt=timeout
    )
    issue = _only_issue(resource)
    assert issue.expression == ("Subscription.channel.extension",)
    assert "backport-timeout" in issue.diagnostics


@pytest.mark.parametrize("max_count", [0, 501])
def test_bad_max_count(max_count: int) -> None:
    issue = _only_issue(subscription("abnormal-lab-result", ENDPOINT, max_count=max_count))
    assert issue.expression == ("Subscription.channel.extension",)
    assert "backport-max-count" in issue.diagnostics


def test_max_count_must_be_a_positive_int_value() -> None:
    resource = _channel_extension(
        subscription("abnormal-lab-result", ENDPOINT), MAX_COUNT, valuePositiveInt=2.5
    )
    assert _only_issue(resource).expression == ("Subscription.channel.extension",)


@pytest.mark.parametrize(
    "header",
    ["NoColon", "X-A: one\r\nX-B: two", "X-A: one\ntwo", "X A: spaced name", ": no name", "X-\rA: v"],
)
def test_malformed_header(header: str) -> None:
    resource = subscription("abnormal-lab-result", ENDPOINT, headers=("X-Ok: fine", header))
    issue = _only_issue(resource)
    assert issue.expression == ("Subscription.channel.header[1]",)  # the index of the bad one


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Authenticate",
        "Expect",
        "Content-Type",  # the channel's payload type says it
        "X-Signature",  # the gateway signs every POST
        "x-SIGNATURE",
        "X-Subscription-Id",
        "X-Event-Numbers",
        "Forwarded",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Real-IP",
    ],
)
def test_headers_the_gateway_or_the_connection_owns_are_refused(name: str) -> None:
    resource = subscription(
        "abnormal-lab-result", ENDPOINT, headers=("Authorization: Bearer t", f"{name}: x")
    )
    issue = _only_issue(resource)
    assert issue.expression == ("Subscription.channel.header[1]",)
    assert name in issue.diagnostics  # named as the client wrote it


@pytest.mark.parametrize("name", ["Authorization", "X-Api-Key", "X-Tenant", "Cookie", "X-Hostname"])
def test_ordinary_headers_are_kept(name: str) -> None:
    spec = _valid(subscription("abnormal-lab-result", ENDPOINT, headers=(f"{name}: v",)))
    assert spec.headers == ((name, "v"),)


def test_short_secret() -> None:
    issue = _only_issue(subscription("abnormal-lab-result", ENDPOINT, secret="too-short"))
    assert issue.expression == ("Subscription.extension",)
    assert "16" in issue.diagnostics
    assert _valid(subscription("abnormal-lab-result", ENDPOINT, secret="x" * 16)).secret == "x" * 16


def test_every_problem_is_reported_at_once() -> None:
    resource = subscription(
        "abnormal-lab-result",
        None,
        filters=("bogus=1",),
        content="everything",
        heartbeat=0,
        max_count=0,
        headers=("NoColon", "X-Fine: yes", "Bad: a\r\nb"),
        secret="short",
    )
    resource["channel"]["payload"] = "text/plain"
    _channel_extension(resource, TIMEOUT, valueUnsignedInt=0)
    expressions = sorted(e for issue in _issues(resource) for e in issue.expression)
    assert expressions == sorted(
        [
            "Subscription.criteria.extension",
            "Subscription.channel.endpoint",
            "Subscription.channel.payload",
            "Subscription.channel.payload.extension",
            "Subscription.channel.extension",  # heartbeat
            "Subscription.channel.extension",  # timeout
            "Subscription.channel.extension",  # max-count
            "Subscription.channel.header[0]",
            "Subscription.channel.header[2]",
            "Subscription.extension",
        ]
    )


def test_unknown_topic_and_bad_channel_together() -> None:
    resource = subscription("abnormal-lab-result", ENDPOINT, channel="sms", filters=("anything=1",))
    resource["criteria"] = "http://example.org/unknown"
    issues = _issues(resource)
    # filters cannot be checked without a topic, so they add no issue of their own
    assert [i.expression for i in issues] == [("Subscription.criteria",), ("Subscription.channel.type",)]
