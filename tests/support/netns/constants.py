"""Fixed names, accounts, ports and the host names the run serves."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CLIENTS = REPO / "tests" / "clients"
SERVICE_DIR = CLIENTS / "serverless-hello"
SERVERLESS_JS = CLIENTS / "node_modules" / "serverless" / "bin" / "serverless.js"

LOOPBACK = "127.0.0.1"
MOTO_PORT = 5000  # the namespace has its own port space: fixed ports cannot clash
DAEMON_PORT = 9911
MOTO_URL = f"http://{LOOPBACK}:{MOTO_PORT}"

BASE_ACCOUNT = "123456789012"  # moto's default account: where the base keys live
ROLE_ACCOUNT = "222222222222"  # where the assumed role lives: the stack must land here
ROLE_ARN = f"arn:aws:iam::{ROLE_ACCOUNT}:role/deployer"
PROFILE = "deploy"
REGION = "us-east-1"
STACK = "hello-dev"
FUNCTION = "hello-dev-hello"
# Set on the runner and every process it starts, so the outer test can prove none is left.
RUN_MARKER = "ROLEBROKER_NETNS_RUN"

BASE_KEY_ID = "AKIAIOSFODNN7NETNS01"
BASE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYnetnsBASE01"
INSPECTOR_KEY_ID = "AKIAIOSFODNN7INSPECT"  # the read-only checker's own fake keys
INSPECTOR_SECRET = "inspector-secret-not-a-credential-of-any-profile"

# What Serverless 3.40 (aws-sdk 2.1693) looked up for deploy + remove, per this harness's
# DNS log: sts.amazonaws.com, cloudformation.us-east-1, lambda.us-east-1,
# <deployment bucket>.s3.amazonaws.com (virtual-hosted S3) and api.ecr.us-east-1 (remove
# looks for the service's image repository). Regional S3/STS names are covered too.
# A name outside these fails the TLS handshake and shows up in the report's "sni" list.
TLS_HOSTS = (
    "amazonaws.com",
    "*.amazonaws.com",
    f"*.{REGION}.amazonaws.com",
    "*.s3.amazonaws.com",
    f"*.s3.{REGION}.amazonaws.com",
    f"*.ecr.{REGION}.amazonaws.com",
)

# Everything that would make Serverless v3 phone home, update itself or prompt.
SERVERLESS_QUIET_ENV = {
    "SLS_TELEMETRY_DISABLED": "1",
    "SLS_TRACKING_DISABLED": "1",
    "SLS_NOTIFICATIONS_MODE": "off",
    "SLS_DEPRECATION_DISABLE": "*",
    "SLS_DISABLE_AUTO_UPDATE": "1",
    "SLS_GEO_LOCATION": "us",
    "SLS_AWS_MONITORING_FREQUENCY": "500",  # poll stack events every 0.5 s, not 5 s
}
