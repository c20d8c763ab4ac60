"""Grants: scoped, expiring, revocable credentials for the endpoint (fake clock, tmp files)."""

from __future__ import annotations

import hmac
import json
import stat
from pathlib import Path

import pytest

from rolebroker import grantcode, grants
from rolebroker.errors import (
    GrantExpired,
    GrantLimitReached,
    GrantRevoked,
    GrantScope,
    InvalidGrantRequest,
    InvalidToken,
)
from rolebroker.grantcode import parse_duration
from rolebroker.grants import GrantStore
from tests.support.clock import FakeClock

MASTER = "m" * 43


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def master() -> list[str]:
    return [MASTER]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "rolebroker" / "grants.json"


def store_at(path: Path, clock: FakeClock, master: list[str], **kwargs: int) -> GrantStore:
    return GrantStore(path, lambda: master[0], clock=clock, **kwargs)


def test_a_grant_opens_its_profiles_and_nothing_else(path: Path, clock: FakeClock, master: list[str]) -> None:
    store = store_at(path, clock, master)
    grant, secret = store.create(["dev", "staging"], ttl=3600, name="ci")
    assert secret.startswith("rbg1.") and len(secret) == grantcode.GRANT_CHARS
    assert secret.isascii() and not any(c.isspace() for c in secret)
    found = store.verify(secret)
    assert found == grant
    store.check_scope(found, "dev")
    store.check_scope(found, "staging")
    with pytest.raises(GrantScope) as refused:
        store.check_scope(found, "prod")
    assert refused.value.status == 403
    assert "dev, staging" in refused.value.message and "'prod'" in refused.value.message
    assert "rolebroker grant prod" in refused.value.message


def test_expiry_follows_the_clock(path: Path, clock: FakeClock, master: list[str]) -> None:
    store = store_at(path, clock, master)
    _, secret = store.create(["dev"], ttl=parse_duration("2h"))
    clock.now += 2 * 3600 - 1
    store.verify(secret)
    clock.now += 1
    with pytest.raises(GrantExpired) as expired:
        store.verify(secret)
    assert expired.value.status == 403 and "rolebroker grant PROFILE" in expired.value.message


def test_revoked_by_name_or_id_and_all(path: Path, clock: FakeClock, master: list[str]) -> None:
    store = store_at(path, clock, master)
    _, a_secret = store.create(["dev"], name="a")
    b, b_secret = store.create(["dev"], name="b")
    _, c_secret = store.create(["dev"], name="c")
    assert store.revoke("a") == [store.list()[0][0]]
    assert store.revoke(b.id)[0].id == b.id
    for secret in (a_secret, b_secret):
        with pytest.raises(GrantRevoked) as revoked:
            store.verify(secret)
        assert 'eval "$(rolebroker env PROFILE)"' in revoked.value.message
    store.verify(c_secret)
    assert store.revoke("nobody") == []
    assert store.revoke_all() == 1
    with pytest.raises(GrantRevoked):
        store.verify(c_secret)


def test_forged_and_malformed_strings_are_invalid(path: Path, clock: FakeClock, master: list[str]) -> None:
    store = store_at(path, clock, master)
    _, secret = store.create(["dev"])
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    unknown_id = grantcode.grant_string(MASTER, "A" * 22)  # a correct mac for an id never issued
    for bad in (None, "", MASTER, flipped, secret + "x", "rbg1." + "A" * 66, unknown_id, secret.upper()):
        with pytest.raises(InvalidToken):
            store.verify(bad)


def test_the_mac_is_compared_in_constant_time(
    path: Path, clock: FakeClock, master: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_at(path, clock, master)
    _, secret = store.create(["dev"])
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(grants.hmac, "compare_digest", spy)
    store.verify(secret)
    with pytest.raises(InvalidToken):
        store.verify(secret[:-2] + "AA" if not secret.endswith("AA") else secret[:-2] + "BB")
    assert len(calls) == 2


def test_rotating_the_master_token_invalidates_every_grant(
    path: Path, clock: FakeClock, master: list[str]
) -> None:
    store = store_at(path, clock, master)
    _, secret = store.create(["dev"])
    master[0] = "n" * 43
    with pytest.raises(InvalidToken):
        store.verify(secret)


def test_grants_survive_a_new_store_and_the_file_holds_no_secret(
    path: Path, clock: FakeClock, master: list[str]
) -> None:
    store = store_at(path, clock, master)
    grant, secret = store.create(["dev", "prod"], ttl=60, name="deploy")
    store.revoke(store.create(["dev"], name="gone")[0].id)
    store.touch(grant)
    clock.now += 5
    store.flush()
    text = path.read_text()
    assert secret not in text and secret.rsplit(".", 1)[1] not in text and MASTER not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = store_at(path, clock, master)
    assert again.verify(secret) == grant
    listed = {g.name: (g, used) for g, used in again.list()}
    assert listed["deploy"][1] == clock.now - 5
    assert listed["gone"][0].revoked
    assert not list(path.parent.glob(".*.tmp"))


def test_touch_does_not_write_the_file(path: Path, clock: FakeClock, master: list[str]) -> None:
    store = store_at(path, clock, master)
    grant, _ = store.create(["dev"])
    before = path.stat().st_mtime_ns, path.read_bytes()
    store.touch(grant)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
    store.flush()
    assert path.read_bytes() != before[1]


def test_a_corrupt_file_is_reported_and_set_aside(path: Path, clock: FakeClock, master: list[str]) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    store = store_at(path, clock, master)
    assert store.problem is not None and "not a grants file" in store.problem
    assert store.list() == []
    assert path.with_name("grants.json.corrupt").read_text() == "{not json"
    _, secret = store.create(["dev"])  # the store works on
    assert store_at(path, clock, master).verify(secret)


def test_bad_records_are_skipped_not_fatal(path: Path, clock: FakeClock, master: list[str]) -> None:
    store = store_at(path, clock, master)
    _, secret = store.create(["dev"], name="good")
    data = json.loads(path.read_text())
    data["grants"].append({"id": "x", "name": "evil\nname", "profiles": [], "created_at": 3})
    path.write_text(json.dumps(data))
    again = store_at(path, clock, master)
    assert again.verify(secret).name == "good"
    assert again.problem is not None and "1 unreadable" in again.problem


def test_the_file_stays_bounded(path: Path, clock: FakeClock, master: list[str]) -> None:
    store = store_at(path, clock, master, max_grants=5)
    for _ in range(3):
        store.create(["dev"], ttl=60)
    store.create(["dev"])
    store.create(["dev"])
    with pytest.raises(GrantLimitReached) as full:
        store.create(["dev"])
    assert full.value.status == 409 and "--revoke" in full.value.message
    clock.now += 60 + grants.KEEP_DEAD - 1  # expired, but for less than a day: still kept
    with pytest.raises(GrantLimitReached):
        store.create(["dev"])
    clock.now += 2
    store.create(["dev"])  # the 3 expired ones are dropped
    assert len(store.list()) == 3
    assert len(json.loads(path.read_text())["grants"]) == 3


def test_bad_requests_are_refused(path: Path, clock: FakeClock, master: list[str]) -> None:
    store = store_at(path, clock, master)
    for profiles, ttl, name in (
        ([], None, None),
        (["dev"], 0, None),
        (["dev"], -5, None),
        (["dev"], None, "bad name"),
        (["dev"], None, "x" * 65),
        (["de\nv"], None, None),
    ):
        with pytest.raises(InvalidGrantRequest):
            store.create(profiles, ttl, name)


def test_parse_duration() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("2h") == 7200
    assert parse_duration("1d") == 86400
    assert parse_duration("1h30m") == 5400
    assert grantcode.DEFAULT_EXEC_TTL == 12 * 3600
    for bad in ("", "2", "h", "2x", "-1h", "0s", "1.5h", "400d", "2h junk"):
        with pytest.raises(ValueError):
            parse_duration(bad)
