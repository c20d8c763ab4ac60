"""The command line: everything that runs in the user's shell rather than in the daemon.

Nothing here imports the daemon side (uvicorn, FastAPI, botocore sessions, cachetools,
asyncio) at module level: ``eval "$(rolebroker env prod)"`` runs on every shell start.
"""
