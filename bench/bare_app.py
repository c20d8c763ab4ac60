"""The reference for bench/footprint.py: a bare FastAPI app on the same uvicorn stack,
answering GET /creds/{profile} with a constant JSON body of the daemon's size."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

BODY = {
    "AccessKeyId": "ASIAREFERENCEAPP0000",
    "SecretAccessKey": "x" * 40,
    "Token": "y" * 360,
    "Expiration": "2030-01-01T00:00:00Z",
    "AccountId": "222222222222",
    "RoleArn": "arn:aws:iam::222222222222:role/prod",
}


@app.get("/healthz")
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@app.get("/creds/{profile}")
async def creds(profile: str) -> Response:
    return JSONResponse(BODY, headers={"Cache-Control": "no-store"})
