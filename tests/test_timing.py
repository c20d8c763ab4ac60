from rolebroker.credentials import Credentials
from rolebroker.timing import RefreshTiming


def creds(expiration: float | None) -> Credentials:
    return Credentials("AKIA", "secret", "token", expiration)


def test_long_session_refreshes_refresh_before_ahead() -> None:
    timing = RefreshTiming(refresh_before=1200)
    assert timing.refresh_at(1000.0, creds(1000.0 + 3600)) == 1000.0 + 3600 - 1200


def test_session_not_longer_than_refresh_before_refreshes_at_half_life() -> None:
    timing = RefreshTiming(refresh_before=1200)
    assert timing.refresh_at(0.0, creds(900.0)) == 450.0
    assert timing.refresh_at(0.0, creds(1200.0)) == 600.0


def test_servable_until_keeps_a_floor_before_expiry() -> None:
    timing = RefreshTiming(refresh_before=1200, serve_floor=300)
    assert timing.servable_until(0.0, creds(3600.0)) == 3300.0
    # Short sessions: the floor is at most a quarter of the lifetime.
    assert timing.servable_until(0.0, creds(20.0)) == 15.0


def test_long_term_keys_never_refresh_nor_expire() -> None:
    timing = RefreshTiming()
    assert timing.refresh_at(0.0, creds(None)) == float("inf")
    assert timing.servable_until(0.0, creds(None)) == float("inf")


def test_already_expired_credentials_are_due_and_unservable() -> None:
    timing = RefreshTiming()
    c = creds(100.0)
    assert timing.refresh_at(200.0, c) <= 200.0
    assert timing.servable_until(200.0, c) <= 200.0


def test_credentials_arriving_expired_or_nearly_are_not_fresh_enough() -> None:
    timing = RefreshTiming(min_fresh=5)
    assert not timing.fresh_enough(200.0, creds(140.0))
    assert not timing.fresh_enough(200.0, creds(204.0))
    assert timing.fresh_enough(200.0, creds(212.0))
    assert timing.fresh_enough(200.0, creds(None))
