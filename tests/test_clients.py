"""Every real client, as users install it, takes its credentials from the daemon with no
change: boto3, the AWS CLI v1 (pip) and v2 (Debian), the AWS SDK for JavaScript v3 and v2.

Each client is a separate process that gets nothing but AWS_CONTAINER_CREDENTIALS_FULL_URI,
AWS_CONTAINER_AUTHORIZATION_TOKEN, a region and the moto STS endpoint, and asks STS who it
is. Missing node or Debian CLI: skipped with the reason, or failed when CI is set.
"""

from __future__ import annotations

import pytest

from tests.support.clients import CLIENT_NAMES, CLIENTS, ClientRun, describe, run_client
from tests.support.daemon import Daemon
from tests.support.moto import MotoServer
from tests.support.stsproxy import StsProxy

PROD_ADMIN_ARN = "arn:aws:sts::333333333333:assumed-role/admin/alice-admin"
PROD_ARN_PREFIX = "arn:aws:sts::222222222222:assumed-role/prod/"

clients = pytest.mark.parametrize("name", CLIENT_NAMES)


def learn_served(daemon: Daemon, *profiles: str) -> None:
    """Fetch what the client was served (same cache entry) so every secret is known to the
    leak checks: the client's output here, the daemon's log at teardown."""
    for profile in profiles:
        response = daemon.get(f"/creds/{profile}")
        assert response.status_code == 200, f"{response.text}\n{daemon.safe_output()[-3000:]}"


def assert_no_leak(run: ClientRun, daemon: Daemon) -> None:
    leaked = daemon.leaked(run.stdout + run.stderr)
    assert not leaked, f"{run.client.name} printed secrets (masked): {leaked}"


def assert_container_provider_used(run: ClientRun, daemon: Daemon) -> None:
    """The JS scripts count their requests to FULL_URI, the boto3 script its failed ones."""
    if run.client.name in ("js-v3", "js-v2"):
        # One request: the warm path answered at once, nothing was retried.
        assert run.counter("credential-requests") == 1, describe(run, daemon)
    if run.client.name == "boto3":
        assert run.counter("credential-attempts-failed") == 0, describe(run, daemon)


@clients
def test_client_gets_the_chained_cross_account_roles(
    name: str, daemon: Daemon, sts: StsProxy, moto: MotoServer
) -> None:
    client = CLIENTS[name]

    admin = run_client(client, daemon, "prod-admin", moto.url)
    learn_served(daemon, "prod-admin")
    assert_no_leak(admin, daemon)
    assert admin.returncode == 0, describe(admin, daemon)
    assert admin.identity()["Arn"] == PROD_ADMIN_ARN, describe(admin, daemon)
    assert admin.identity()["Account"] == "333333333333"
    assert_container_provider_used(admin, daemon)

    prod = run_client(client, daemon, "prod", moto.url)
    learn_served(daemon, "prod")
    assert_no_leak(prod, daemon)
    assert prod.returncode == 0, describe(prod, daemon)
    assert prod.identity()["Arn"].startswith(PROD_ARN_PREFIX), describe(prod, daemon)
    assert prod.identity()["Account"] == "222222222222"
    assert_container_provider_used(prod, daemon)

    # One AssumeRole per hop, the external id on prod's; prod was a cached hop of prod-admin.
    calls = {c.params["RoleArn"]: c.params for c in sts.calls("AssumeRole")}
    assert sorted(calls) == [
        "arn:aws:iam::111111111111:role/dev",
        "arn:aws:iam::222222222222:role/prod",
        "arn:aws:iam::333333333333:role/admin",
    ]
    assert calls["arn:aws:iam::222222222222:role/prod"]["ExternalId"] == "prod-external-id"
    assert sts.count("AssumeRole") == 3
    # The daemon saw both profiles being used (the identity did not come from elsewhere).
    status = {p["name"]: p for p in daemon.get("/status").json()["profiles"]}
    assert status["prod-admin"]["last_used"] and status["prod"]["last_used"]
    assert status["prod-admin"]["last_error"] is None


@clients
def test_unknown_profile_error_reaches_the_client(name: str, daemon: Daemon, moto: MotoServer) -> None:
    """botocore and both CLIs print the daemon's JSON error; the JS SDKs hide it behind a
    generic message (docs/clients.md), and JS v2 fails fast on a 404."""
    run = run_client(CLIENTS[name], daemon, "no-such-profile", moto.url)
    assert_no_leak(run, daemon)
    assert run.returncode != 0, describe(run, daemon)
    assert "Traceback" not in daemon.output()
    if name in ("boto3", "cli-v1", "cli-v2"):
        assert "404" in run.stderr, describe(run, daemon)
        assert '"code":"ProfileNotFound"' in run.stderr, describe(run, daemon)
        assert "no-such-profile" in run.stderr, describe(run, daemon)
    elif name == "js-v2":
        # A 4xx is not retried: one request, then the rest of the chain finds nothing.
        assert run.counter("credential-requests") == 1, describe(run, daemon)
        assert "Missing credentials in config" in run.stderr, describe(run, daemon)
        assert run.seconds < 5, describe(run, daemon)
    else:
        # fromHttp tries 4 times, then the fromContainerMetadata fallback asks once more.
        assert run.counter("credential-requests") == 5, describe(run, daemon)
        assert "Could not load credentials from any providers" in run.stderr, describe(run, daemon)


@clients
def test_token_file_instead_of_the_token_variable(name: str, daemon: Daemon, moto: MotoServer) -> None:
    """The daemon's own token file works as AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: it has no
    trailing newline (which botocore rejects and which crashes JS SDK v2). AWS CLI v2 before
    2.15 (Debian's 2.9) ignores the file and sends no token: the daemon says what to set."""
    token_file = str(daemon.home.token_file)
    run = run_client(
        CLIENTS[name],
        daemon,
        "prod",
        moto.url,
        env={"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": token_file},
        without=["AWS_CONTAINER_AUTHORIZATION_TOKEN"],
    )
    learn_served(daemon, "prod")
    assert_no_leak(run, daemon)
    if name == "cli-v2":
        assert run.returncode != 0, describe(run, daemon)
        assert '"code":"MissingToken"' in run.stderr, describe(run, daemon)
        assert "AWS_CONTAINER_AUTHORIZATION_TOKEN" in run.stderr
        return
    assert run.returncode == 0, describe(run, daemon)
    assert run.identity()["Arn"].startswith(PROD_ARN_PREFIX), describe(run, daemon)
    assert_container_provider_used(run, daemon)
