"""Signed pause, resume and unsubscribe links over real HTTP: opening one changes nothing (mail
scanners open links), its button or a mail client's RFC 8058 one-click POST does it, again and
again without error; an altered or foreign link is refused with a page that says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.alerts.links import Link, LinkSigner, link_secret, rule_stamp, signer_from_settings
from app.alerts.rules import Filters, RadiusRule
from app.alerts.store import AlertStore
from app.api.main import create_app
from app.config import Settings

SECRET = "k" * 40
Setup = tuple[TestClient, AlertStore, LinkSigner, int, int, int]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TestClient, AlertStore, LinkSigner, int, int, int]]:
    url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    settings = Settings(
        data_dir=tmp_path, scheduler_enabled=False, alerts_url=url, alerts_link_secret=SECRET, public_url="http://testserver"
    )
    store = AlertStore(url)
    key, _ = store.create_key("k")
    rule = store.create_rule(key.id, "Near the school", RadiusRule(lat=40.7, lon=-73.9, radius_m=200), Filters(), city="nyc")
    endpoint = store.create_endpoint(key.id, "email", "parent@example.org")
    store.link(rule.id, endpoint.id)
    app = create_app(settings)
    with TestClient(app) as client:
        if getattr(app.state, "alerts", None) is None:
            app.state.alerts = store
        yield client, store, signer_from_settings(settings), rule.id, endpoint.id, rule_stamp(rule.created_at)
    store.close()


def _path(url: str) -> str:
    return url.removeprefix("http://testserver")


def test_opening_a_pause_link_changes_nothing_and_its_button_pauses(setup: Setup) -> None:
    client, store, signer, rule_id, endpoint_id, stamp = setup
    url = _path(signer.url("pause", rule_id, endpoint_id, stamp))
    page = client.get(url)
    assert page.status_code == 200
    assert "Near the school" in page.text
    assert f'action="{url}"' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert not store.rules()[0].paused
    for _ in range(2):  # following it twice is the same as once
        done = client.post(url)
        assert done.status_code == 200
        assert "paused" in done.text
    assert store.rules()[0].paused
    assert [e.action for e in store.audit() if e.action.startswith("link.")] == ["link.pause"]
    client.post(_path(signer.url("resume", rule_id, endpoint_id, stamp)))
    assert not store.rules()[0].paused


def test_one_click_unsubscribe_stops_the_rule_sending_there(setup: Setup) -> None:
    client, store, signer, rule_id, endpoint_id, stamp = setup
    url = _path(signer.url("unsubscribe", rule_id, endpoint_id, stamp))
    reply = client.post(url, content="List-Unsubscribe=One-Click", headers={"content-type": "application/x-www-form-urlencoded"})
    assert reply.status_code == 200
    assert "Unsubscribed" in reply.text
    assert store.enqueue("nyc", "events", "p", [(rule_id, "nyc_311", "1", {"a": 1})]) == 0  # no endpoint left to queue for
    assert client.post(url).status_code == 200  # still works, says so
    store.delete_rule(store.rules()[0].key_id, rule_id)
    gone = client.get(url)
    assert gone.status_code == 200
    assert "no longer exists" in gone.text


@pytest.mark.parametrize("how", ["altered", "foreign", "garbage", "long"])
def test_a_bad_link_is_refused_with_a_page(setup: Setup, how: str) -> None:
    client, store, signer, rule_id, endpoint_id, stamp = setup
    token = signer.token(Link("pause", rule_id, endpoint_id, stamp))
    bad = {
        "altered": token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "foreign": LinkSigner("z" * 40, "http://x").token(Link("pause", rule_id, endpoint_id, stamp)),
        "garbage": "%00%ff..",
        "long": "a" * 600,
    }[how]
    for method in (client.get, client.post):
        reply = method(f"/links/{bad}")
        assert reply.status_code == 422
        assert "token" in reply.text
        assert "<script" not in reply.text
    assert not store.rules()[0].paused


def test_the_link_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = link_secret(None, tmp_path)
    assert len(first) >= 48
    assert link_secret(None, tmp_path) == first
    assert (tmp_path / "alerts_link.key").stat().st_mode & 0o077 == 0
    assert link_secret("c" * 40, tmp_path) == "c" * 40
    with pytest.raises(ValueError, match="32"):
        LinkSigner("short", "http://x")


def test_a_link_of_a_deleted_rule_never_acts_on_a_rule_that_got_its_id(setup: Setup) -> None:
    """SQLite hands out a deleted row's id again: the link also carries the rule's creation
    instant and its endpoint must belong to the rule's key, so another key's new rule is safe."""
    client, store, signer, rule_id, endpoint_id, stamp = setup
    url = _path(signer.url("pause", rule_id, endpoint_id, stamp))
    owner = store.rules()[0].key_id
    assert store.delete_rule(owner, rule_id)
    other, _ = store.create_key("someone else")
    again = store.create_rule(other.id, "Private rule", RadiusRule(lat=40.7, lon=-73.9, radius_m=50), Filters(), city="nyc")
    with store.session() as s:  # the id may or may not be reused by the backend: make sure it is
        from app.alerts.models import Rule

        row = s.get(Rule, again.id)
        assert row is not None
        row.id = rule_id
    page = client.get(url)
    assert "Private rule" not in page.text
    assert "no longer exists" in page.text
    client.post(url)
    assert not store.rules()[0].paused
    forged = _path(signer.url("pause", rule_id, endpoint_id, rule_stamp(store.rules()[0].created_at)))  # right stamp, foreign endpoint
    assert "Private rule" not in client.get(forged).text
