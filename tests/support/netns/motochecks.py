"""Read-only looks into moto's accounts: what the deploy created."""

from __future__ import annotations

from typing import Any

from tests.support.netns.constants import (
    FUNCTION,
    INSPECTOR_KEY_ID,
    INSPECTOR_SECRET,
    MOTO_URL,
    REGION,
    STACK,
)


def moto_client(service: str, account: str) -> Any:
    """A boto3 client on plain-http moto that looks into ``account`` (x-moto-account-id),
    with its own fake keys: it can observe the deploy without sharing its credentials."""
    import boto3
    from botocore.config import Config

    session: Any = boto3.session.Session(
        aws_access_key_id=INSPECTOR_KEY_ID,
        aws_secret_access_key=INSPECTOR_SECRET,
        region_name=REGION,
    )
    client = session.client(service, endpoint_url=MOTO_URL, config=Config(retries={"max_attempts": 2}))

    def pin_account(request: Any, **_: Any) -> None:
        request.headers["x-moto-account-id"] = account

    client.meta.events.register("before-sign.*.*", pin_account)
    return client


def account_snapshot(account: str) -> dict[str, Any]:
    """Stacks (with status), Lambda functions and buckets of one account."""
    cfn, lam, s3 = (moto_client(s, account) for s in ("cloudformation", "lambda", "s3"))
    stacks = [
        {"name": s["StackName"], "status": s["StackStatus"]}
        for page in cfn.get_paginator("list_stacks").paginate()
        for s in page["StackSummaries"]
    ]
    functions = [f["FunctionName"] for f in lam.list_functions().get("Functions", [])]
    buckets = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
    return {"stacks": stacks, "functions": functions, "buckets": buckets}


def stack_details(account: str, stack: str = STACK) -> dict[str, Any]:
    """Status and resource types of one stack, or ``{"exists": False}``."""
    cfn = moto_client("cloudformation", account)
    try:
        found = cfn.describe_stacks(StackName=stack)["Stacks"]
    except Exception as exc:  # botocore ClientError "Stack ... does not exist"
        return {"exists": False, "error": type(exc).__name__}
    if not found:
        return {"exists": False}
    resources = cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]
    return {
        "exists": True,
        "status": found[0]["StackStatus"],
        "resources": sorted({r["ResourceType"] for r in resources}),
    }


def function_details(account: str, name: str = FUNCTION) -> dict[str, Any]:
    """Whether the function exists in ``account``, with the ARN that names its account."""
    lam = moto_client("lambda", account)
    try:
        config = lam.get_function(FunctionName=name)["Configuration"]
    except Exception as exc:  # ResourceNotFoundException
        return {"exists": False, "error": type(exc).__name__}
    return {"exists": True, "runtime": config.get("Runtime"), "arn": config.get("FunctionArn")}
