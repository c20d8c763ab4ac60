"""``rolebroker doctor``: why an SDK in this environment does not get its credentials.

Only some SDKs show the daemon's error message, and most bypass the endpoint silently
when something earlier in their chain has credentials (docs/clients.md). So the
doctor checks the daemon, then this environment, and for every finding says what is
wrong, why it matters and the exact fix. It never prints a secret: variable names and
setting names only, never their values (except profile names, hosts and ports).
"""

from __future__ import annotations

import calendar
import difflib
import shlex
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from rolebroker.authtoken import token_matches
from rolebroker.cli.client import (
    CLIENT_HOST,
    ClientError,
    DaemonClient,
    DaemonUnreachable,
    ListenerNotProven,
    Reply,
    TokenUnavailable,
    creds_path,
    error_of,
)
from rolebroker.cli.shellenv import (
    CREDENTIALS_FILE,
    EMPTY_FILE,
    FULL_URI,
    JS_V2_LOAD_CONFIG,
    KEY_VARS,
    PROFILE_VARS,
    RELATIVE_URI,
    TOKEN,
    TOKEN_FILE,
    AwsConfigView,
    read_aws_config,
)
from rolebroker.config import DEFAULT_PORT, Settings, is_loopback_host
from rolebroker.statusdoc import StatusDoc

WEB_IDENTITY = "AWS_WEB_IDENTITY_TOKEN_FILE"
# Hosts aws-sdk-js v2 (Serverless v3) and the AWS CLI v2 before 2.15 accept (docs/clients.md, "The request").
_EVERY_CLIENT_HOSTS = frozenset({"127.0.0.1", "localhost"})


class Level(Enum):
    OK = "ok"
    NOTE = "note"
    PROBLEM = "PROBLEM"


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    what: str
    why: str = ""
    fix: str = ""


@dataclass
class _Context:
    settings: Settings
    environ: Mapping[str, str]
    profile: str | None
    client: DaemonClient
    aws_config: AwsConfigView
    findings: list[Finding] = field(default_factory=list)
    reachable: bool = False
    daemon_token: str | None = None
    """The token file's token, once the daemon accepted it."""
    known_profiles: tuple[str, ...] = ()
    """The profile names the daemon serves (from /status)."""
    unservable: dict[str, str] = field(default_factory=dict)
    """Profiles the daemon refused with a 4xx, and the code: `rolebroker env` fails for them."""
    checked: set[str] = field(default_factory=set)

    def ok(self, what: str) -> None:
        self.findings.append(Finding(Level.OK, what))

    def note(self, what: str, why: str = "", fix: str = "") -> None:
        self.findings.append(Finding(Level.NOTE, what, why, fix))

    def problem(self, what: str, why: str, fix: str) -> None:
        self.findings.append(Finding(Level.PROBLEM, what, why, fix))

    def env_fix(self, profile: str | None = None) -> str:
        """The ``rolebroker env`` line, for a profile it can work for: never one the daemon
        refused (that line would fail), but the closest existing name for a typo."""
        name = profile or self.environ.get("ROLEBROKER_PROFILE") or self.profile or "PROFILE"
        port = "" if self.settings.port == DEFAULT_PORT else f" --port {self.settings.port}"
        code = self.unservable.get(name)
        if code is None:
            return f'eval "$(rolebroker env {shlex.quote(name)}{port})"'
        close = self.closest(name)
        if code == "ProfileNotFound" and close:
            return f'eval "$(rolebroker env {shlex.quote(close[0])}{port})"   # {name!r} does not exist'
        return f'first fix profile {name!r} (above), then: eval "$(rolebroker env {shlex.quote(name)}{port})"'

    def closest(self, name: str) -> list[str]:
        return difflib.get_close_matches(name, self.known_profiles, n=3, cutoff=0.5)


def diagnose(
    settings: Settings, environ: Mapping[str, str], profile: str | None = None, *, port80: bool = False
) -> list[Finding]:
    """Every check, in the order a user should fix things; ``port80``: also the
    ``rolebroker port80`` redirect and tokenless mode (``doctor --port80``)."""
    aws_config = read_aws_config(environ)
    ctx = _Context(settings, environ, profile, DaemonClient(settings), aws_config)
    _check_daemon(ctx)
    if profile is not None:
        _check_profile(ctx, profile)  # first: the fixes below name it, so they must work for it
    served = _check_endpoint_variables(ctx)
    _check_tokens(ctx, served)
    _check_shadowing(ctx)
    _check_profiles(ctx, served)
    if port80:
        _check_port80(ctx)
    return ctx.findings


# -- the daemon ------------------------------------------------------------------------


def _check_daemon(ctx: _Context) -> None:
    where = f"{CLIENT_HOST}:{ctx.settings.port}"
    try:
        ctx.client.healthz()
    except DaemonUnreachable as exc:
        ctx.problem(
            exc.summary,
            "nothing serves credentials, so every SDK pointed at the endpoint fails",
            exc.hint,
        )
        _check_token_file_shape(ctx)
        return
    ctx.reachable = True
    _check_token_file_shape(ctx)
    try:
        token = ctx.client.token()
    except ClientError as exc:
        ctx.problem(
            str(exc),
            "without the daemon's token this CLI and every client are refused",
            "pass the daemon's token file with --token-file or ROLEBROKER_TOKEN_FILE",
        )
        return
    reply = _get(ctx, "/status", token)
    if reply is None:
        return
    if reply.status != 200 and reply.status not in (401, 403):
        error = error_of(reply)
        ctx.problem(f"GET /status failed: {error.code}: {error.message}", "", "see the daemon's log")
        return
    if reply.status != 200:
        error = error_of(reply)
        ctx.problem(
            f"the daemon on {where} refuses the token in {ctx.settings.token_file} ({error.code})",
            "it was started with another token file, so tokens exported from this one are refused",
            "pass the daemon's token file with --token-file or ROLEBROKER_TOKEN_FILE, or restart the "
            "daemon so that it uses this one",
        )
        return
    ctx.daemon_token = token
    status = StatusDoc.from_json(reply.json_object() or {})
    ctx.known_profiles = tuple(p.name for p in status.profiles)
    ctx.ok(
        f"rolebroker {status.version or '?'} answers on {where} "
        f"(pid {status.pid if status.pid is not None else '?'}) "
        f"and accepts the token in {ctx.settings.token_file}"
    )
    _check_caller_identity(ctx, status)
    if status.config_error is not None:
        config_error = status.config_error
        ctx.problem(
            f"the daemon cannot read the AWS config: {config_error.code}: {config_error.message}",
            "it keeps serving the last good version; profiles added or changed since are unknown to it",
            "fix the file, then run: rolebroker reload",
        )
    if status.settings_error:
        ctx.problem(
            f"the daemon cannot read its own settings: {status.settings_error}",
            "it keeps running with the previous settings",
            "fix the file, then run: rolebroker reload",
        )


def _check_caller_identity(ctx: _Context, status: StatusDoc) -> None:
    audit = f" in {status.audit_file}" if status.audit_file else ""
    if status.caller_identity == "unavailable":
        ctx.note(
            "the daemon cannot tell who calls (no netlink sock_diag or /proc/net/tcp on this system)",
            "the ForeignUser check is skipped: another local user holding the token or a grant is "
            f"served; the audit log{audit} has no uid, pid or program; tokenless mode serves nobody",
            "Linux with /proc is needed for caller identity (macOS: not yet supported)",
        )
    elif status.caller_identity is not None:
        ctx.ok(
            f"the daemon knows who calls ({status.caller_identity}): other users are refused "
            f"(ForeignUser), and every credential request is audited with its process{audit} "
            "(rolebroker audit)"
        )


def _check_token_file_shape(ctx: _Context) -> None:
    """A missing file is reported by the token check that follows (or implied by a stopped daemon)."""
    path = ctx.settings.token_file
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        ctx.problem(
            f"cannot read the token file {path}: {exc.strerror}",
            "clients and this CLI need it",
            f"check the permissions of {path} (it should be 0600 and yours)",
        )
        return
    _check_token_bytes(ctx, raw, f"the token file {path}", _rewrite_fix(path))


def _check_token_bytes(ctx: _Context, raw: bytes, source: str, fix: str) -> None:
    stripped = raw.strip()
    if not stripped:
        ctx.problem(f"{source} is empty", "clients send an empty token and are refused", fix)
    elif raw != stripped and raw.rstrip(b"\r\n") == stripped:
        ctx.problem(
            f"{source} ends with a newline",
            "botocore raises ValueError, aws-sdk-js v2 (Serverless v3) crashes the Node process, Go and Rust "
            "refuse the header",
            fix,
        )
    elif raw != stripped or any(chr(b).isspace() for b in stripped):
        ctx.problem(
            f"{source} contains whitespace",
            "the token is sent verbatim, so it never matches",
            fix,
        )


def _rewrite_fix(path: Path) -> str:
    quoted = shlex.quote(str(path))
    return f"printf '%s' \"$(cat {quoted})\" > {quoted}   # rewrites it without the newline"


# -- what this environment tells SDKs ---------------------------------------------------


def _check_endpoint_variables(ctx: _Context) -> str | None:
    """Checks FULL_URI and RELATIVE_URI; returns the profile FULL_URI serves, if usable."""
    env = ctx.environ
    if env.get(RELATIVE_URI):
        ctx.problem(
            f"{RELATIVE_URI} is set",
            "almost every SDK prefers it over FULL_URI and asks 169.254.170.2, not rolebroker",
            f"unset {RELATIVE_URI}   # or: {ctx.env_fix()}",
        )
    raw = env.get(FULL_URI)
    if not raw:
        ctx.problem(
            f"{FULL_URI} is not set",
            "SDKs in this environment do not ask rolebroker at all",
            ctx.env_fix(),
        )
        return None
    try:
        url = urllib.parse.urlsplit(raw)
        host, port = url.hostname or "", url.port
    except ValueError:
        ctx.problem(f"{FULL_URI} is not a valid URL", "SDKs refuse it", ctx.env_fix())
        return None
    shown = f"{url.scheme}://{url.netloc.rpartition('@')[2]}{url.path}"
    fixed = ctx.env_fix(_profile_in_path(url.path))
    usable = True
    if url.scheme != "http":
        ctx.problem(f"{FULL_URI}={shown} is not http://", "rolebroker speaks plain HTTP on loopback", fixed)
        usable = False
    if not is_loopback_host(host):
        ctx.problem(
            f"{FULL_URI}={shown} does not point at this machine",
            "rolebroker only listens on loopback, and SDKs refuse plain HTTP to other hosts",
            fixed,
        )
        return None
    if host not in _EVERY_CLIENT_HOSTS:
        ctx.problem(
            f"{FULL_URI}={shown} uses host {url.netloc.rpartition('@')[2].rsplit(':', 1)[0]}",
            "aws-sdk-js v2 (so Serverless v3) and the AWS CLI v2 before 2.15 accept only 127.0.0.1 and "
            "localhost, and rolebroker listens on 127.0.0.1",
            fixed,
        )
        usable = False
    elif host == "localhost":
        ctx.note(
            f"{FULL_URI} uses localhost",
            "Go, Java and Rust SDKs resolve it and need every address to be loopback; rolebroker holds "
            "127.0.0.1 and ::1, but 127.0.0.1 is the one host every SDK accepts",
            fixed,
        )
    if port != ctx.settings.port:
        ctx.problem(
            f"{FULL_URI}={shown} points at port {port or 80}, but rolebroker listens on {ctx.settings.port}",
            "SDKs ask a port where rolebroker is not",
            fixed,
        )
        usable = False
    served = _profile_in_path(url.path)
    if served is None:
        ctx.problem(
            f"{FULL_URI}={shown} is not a /creds/PROFILE address",
            "rolebroker serves credentials only under /creds/PROFILE",
            fixed,
        )
        return None
    return served if usable else None


def _profile_in_path(path: str) -> str | None:
    if path == "/creds":
        return ""
    if path.startswith("/creds/") and len(path) > len("/creds/") and "/" not in path[len("/creds/") :]:
        return urllib.parse.unquote(path[len("/creds/") :])
    return None


def _check_tokens(ctx: _Context, served: str | None) -> None:
    env = ctx.environ
    env_token = env.get(TOKEN)
    file_name = env.get(TOKEN_FILE)
    if not env.get(FULL_URI):
        return
    if env_token is None and not file_name:
        ctx.problem(
            f"neither {TOKEN} nor {TOKEN_FILE} is set",
            "SDKs send no token and rolebroker refuses them (MissingToken)",
            ctx.env_fix(served),
        )
        return
    file_token: str | None = None
    if file_name:
        path = Path(file_name)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            ctx.problem(
                f"{TOKEN_FILE}={file_name} cannot be read ({exc.strerror})",
                "SDKs that read the file (botocore, AWS CLI >= 2.15, JS SDK v3, Rust, recent Go SDKs) fail",
                f"unset {TOKEN_FILE}   # or: {ctx.env_fix(served)}",
            )
        else:
            _check_token_bytes(ctx, raw, f"the file in {TOKEN_FILE} ({file_name})", _rewrite_fix(path))
            file_token = raw.decode("ascii", "replace").strip()
    if env_token is not None:
        _check_token_bytes(ctx, env_token.encode(), TOKEN, ctx.env_fix(served))
    if env_token is not None and file_token is not None and not token_matches(env_token.strip(), file_token):
        ctx.problem(
            f"{TOKEN} and the file in {TOKEN_FILE} hold different tokens",
            "botocore, the AWS CLI >= 2.15, JS SDK v3, Rust and recent Go SDKs send the file's; aws-sdk-js "
            "v2, Java and Go SDKs without token-file support (such as v1 1.44 and v2 1.17 of Debian "
            "bookworm) the variable's, so some clients are refused",
            ctx.env_fix(served),
        )
    if not ctx.reachable:
        return
    for name, token in ((TOKEN, env_token), (TOKEN_FILE, file_token)):
        if token is None or not token.strip():
            continue
        if ctx.daemon_token is not None and token_matches(ctx.daemon_token, token.strip()):
            continue
        _check_presented_token(ctx, name, token.strip(), served)


def _check_presented_token(ctx: _Context, name: str, token: str, served: str | None) -> None:
    """A token that is not the token file's may be a grant (``rolebroker env`` exports one):
    ask the daemon what it is (GET /grants/self) rather than compare strings."""
    reply = _get(ctx, "/grants/self", token)
    if reply is None:
        return
    if reply.status == 404 and error_of(reply).code == "NotFound":  # a daemon without grants
        reply = _get(ctx, "/status", token)
        if reply is None or reply.status == 200:
            return
    if reply.status == 200:
        body = reply.json_object() or {}
        if body.get("master") is not True:
            _report_grant(ctx, name, body, served)
        return
    error = error_of(reply)
    if error.code in ("GrantExpired", "GrantRevoked"):
        ctx.problem(
            f"the grant in {name} has {'expired' if error.code == 'GrantExpired' else 'been revoked'}",
            f"rolebroker refuses every request with it ({error.code})",
            ctx.env_fix(served),
        )
    elif reply.status in (401, 403):
        ctx.problem(
            f"the token in {name} is not the daemon's, nor a grant it knows",
            f"rolebroker refuses every request with it ({error.code})",
            ctx.env_fix(served),
        )


def _report_grant(ctx: _Context, name: str, grant: Mapping[str, object], served: str | None) -> None:
    label = grant.get("name") or grant.get("id") or "?"
    raw = grant.get("profiles")
    profiles = [str(p) for p in raw] if isinstance(raw, list) else []
    expires = grant.get("expires_at")
    if isinstance(expires, str):
        left = _left(expires)
        until = f"expires at {expires} ({left})" if left else f"expired at {expires}"
    else:
        until = "never expires (until revoked: rolebroker grant --revoke NAME)"
    ctx.ok(f"{name} holds grant {label!r} for {', '.join(profiles) or 'no profile'}; it {until}")
    if served and served not in profiles:
        ctx.problem(
            f"grant {label!r} does not cover profile {served!r}, which {FULL_URI} asks for",
            "rolebroker refuses SDKs here (GrantScope)",
            ctx.env_fix(served),
        )
    elif served == "" and profiles:
        ctx.note(
            f"{FULL_URI} ends in /creds: with this grant the daemon serves its first profile, {profiles[0]!r}"
        )
    if isinstance(expires, str) and _left(expires) and _seconds_left(expires) < 600:
        ctx.note(
            f"grant {label!r} expires in under 10 minutes",
            "SDKs in this environment are refused after that (GrantExpired)",
            ctx.env_fix(served),
        )


def _seconds_left(stamp: str) -> float:
    try:
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) - time.time()
    except ValueError:
        return 0.0


def _left(stamp: str) -> str:
    """``in 1h20m`` for a time ahead, empty when it has passed."""
    seconds = int(_seconds_left(stamp))
    if seconds <= 0:
        return ""
    hours, rest = divmod(seconds, 3600)
    return f"in {hours}h{rest // 60:02d}m" if hours else f"in {max(1, rest // 60)} min"


def _check_shadowing(ctx: _Context) -> None:
    env = ctx.environ
    keys = [name for name in KEY_VARS if env.get(name)]
    if keys:
        ctx.problem(
            f"{', '.join(keys)} {'is' if len(keys) == 1 else 'are'} set",
            "every SDK uses keys from the environment first, so rolebroker is bypassed",
            f"unset {' '.join(keys)}   # or: {ctx.env_fix()}",
        )
    profiles = [f"{name}={env[name]}" for name in PROFILE_VARS if env.get(name)]
    if profiles:
        ctx.problem(
            f"{', '.join(profiles)} {'is' if len(profiles) == 1 else 'are'} set",
            "SDKs resolve a named profile before the container endpoint, so rolebroker is bypassed (and "
            "Serverless v3 fails on profiles without keys)",
            f"unset {' '.join(n for n in PROFILE_VARS if env.get(n))}   # or: {ctx.env_fix()}",
        )
    if env.get(WEB_IDENTITY):
        ctx.problem(
            f"{WEB_IDENTITY} is set",
            "SDKs assume a role with that web identity token before asking rolebroker",
            f"unset {WEB_IDENTITY} AWS_ROLE_ARN   # or: {ctx.env_fix()}",
        )
    view = ctx.aws_config
    if view.default_in_credentials:
        ctx.problem(
            f"[default] in {view.credentials_path} has {', '.join(view.default_in_credentials)}",
            "with no AWS_PROFILE, SDKs use the default profile's credentials before rolebroker",
            f"export {CREDENTIALS_FILE}={EMPTY_FILE} {JS_V2_LOAD_CONFIG}=1   # in client shells, as "
            "rolebroker env does (the JS SDK v2 needs both); or move "
            "them to a named profile (e.g. [base]) and set source_profile = base where they are used",
        )
    if view.default_in_config:
        ctx.problem(
            f"[default] in {view.config_path} has {', '.join(view.default_in_config)}",
            "with no AWS_PROFILE, SDKs use the default profile's credentials before rolebroker",
            "move them to a named profile (e.g. [profile base]) and set source_profile = base where they "
            "are used; then: rolebroker reload",
        )
    for error in view.errors:
        ctx.problem(error, "SDKs fail to read the AWS config too", "fix the file")


# -- can the profiles be served ---------------------------------------------------------


def _check_profiles(ctx: _Context, served: str | None) -> None:
    if ctx.profile is not None and served is not None and served != ctx.profile:
        ctx.note(
            f"this environment uses profile {served or '(the daemon default)'!r}, not {ctx.profile!r}",
            "",
            ctx.env_fix(ctx.profile),
        )
    for name in dict.fromkeys(p for p in (served, ctx.profile) if p is not None):
        if name not in ctx.checked:
            _check_profile(ctx, name)


def _check_profile(ctx: _Context, profile: str) -> None:
    ctx.checked.add(profile)
    if not ctx.reachable or ctx.daemon_token is None:
        return
    label = repr(profile) if profile else "the daemon's default profile"
    path = creds_path(profile) if profile else "/creds"
    reply = _get(ctx, path, ctx.daemon_token, timeout=ctx.settings.request_timeout + 10)
    if reply is None:
        return
    if reply.status != 200:
        error = error_of(reply)
        if error.user_must_act:
            ctx.unservable[profile] = error.code
        ctx.problem(
            f"rolebroker cannot serve {label}: {error.code} (HTTP {reply.status})",
            error.message,
            _fix_for(ctx, profile, error.code),
        )
        return
    body = reply.json_object() or {}
    left = _expires_in(str(body.get("Expiration", "")))
    account = body.get("AccountId") or "?"
    role = body.get("RoleArn")
    ctx.ok(f"rolebroker serves {label}: account {account}{f', role {role}' if role else ''}, {left}")


_CONFIG_CODES = frozenset(
    {
        "SourceProfileLoop",
        "SourceProfileNotFound",
        "SourceProfileMissing",
        "InvalidProfile",
        "NoSourceCredentials",
        "ConfigFileError",
        "CredentialSourceFailed",
    }
)
"""Codes only an edit of the AWS config fixes."""


def _fix_for(ctx: _Context, profile: str, code: str) -> str:
    if code in ("StsUnavailable", "StsTimeout"):
        return "retry in a few seconds; if it persists, check the network and: rolebroker status"
    files = " / ".join(map(str, (ctx.aws_config.config_path, ctx.aws_config.credentials_path)))
    if code == "ProfileNotFound":
        close = ctx.closest(profile)
        port = "" if ctx.settings.port == DEFAULT_PORT else f" --port {ctx.settings.port}"
        if close:
            names = ", ".join(close)
            return (
                f"did you mean {names}? e.g. rolebroker doctor {shlex.quote(close[0])}{port}; or add "
                f"[profile {profile}] to the AWS config (the daemon finds it on the next request)"
            )
        known = ", ".join(ctx.known_profiles[:20]) or "none"
        return f"use an existing profile ({known}) or add [profile {profile}] to the AWS config"
    if code in _CONFIG_CODES:
        return (
            f"fix profile {profile!r} in the AWS config ({files}) as the message says, "
            "then: rolebroker reload"
        )
    return "do what the message above says; then: rolebroker status"


def _expires_in(stamp: str) -> str:
    try:
        expires = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "expiry unknown"
    minutes = int((expires - time.time()) // 60)
    return f"expires in {minutes} min"


def _get(ctx: _Context, path: str, token: str, *, timeout: float = 10.0) -> Reply | None:
    try:
        return ctx.client.request("GET", path, token=token, timeout=timeout)
    except ListenerNotProven as exc:
        ctx.problem(
            exc.summary,
            "another user may be squatting the port: whatever listens there did not prove it knows the "
            "token, so no token was sent to it, but every client pointed at it would send theirs",
            f"stop that process{exc.detail} (ss -ltnp shows it), or run rolebroker on another port "
            "(--port, ROLEBROKER_PORT, port in config.toml); socket activation (rolebroker.socket) keeps "
            "the port held while the daemon is stopped",
        )
        ctx.reachable = False
        return None
    except TokenUnavailable as exc:
        ctx.problem(
            str(exc),
            "without the daemon's token this CLI and every client are refused",
            "pass the daemon's token file with --token-file or ROLEBROKER_TOKEN_FILE",
        )
        ctx.reachable = False
        return None
    except DaemonUnreachable as exc:
        ctx.problem(exc.summary, "the daemon stopped answering during the checks", exc.hint)
        ctx.reachable = False
        return None


# -- rolebroker port80 and tokenless mode (doctor --port80) -------------------------------


def _check_port80(ctx: _Context) -> None:
    """By behaviour, so no root is needed: a tokenless request from this user, first to the
    daemon's own port (is tokenless mode on?), then to port 80 of both loopback addresses
    (does the redirect reach this daemon, with the caller's identity intact?)."""
    if not ctx.reachable or ctx.daemon_token is None:
        return
    from rolebroker.cli import port80_setup as port80

    port = ctx.settings.port
    line = port80.TOKENLESS_LINE
    direct = port80.probe(ctx.daemon_token, CLIENT_HOST, port, port=port)
    tokenless = direct.verdict == "tokenless"
    if tokenless:
        ctx.ok(
            f"tokenless mode is on ({line}): your own processes get credentials without a token; "
            "other users' connections are refused by uid"
        )
    elif direct.verdict == "token-required":
        ctx.problem(
            "tokenless mode is off: `curl http://localhost/creds/PROFILE` without a token gets 401 "
            "MissingToken",
            "port 80 needs it: curl sends no token (and any same-user process could then fetch "
            "credentials, which is why it is opt-in: README, Security)",
            f"add `{line}` to {ctx.settings.config_file or 'config.toml'}, then: rolebroker reload",
        )
    else:
        ctx.problem(
            f"a tokenless request to the daemon gave an unexpected answer ({direct.verdict} {direct.detail})",
            "",
            "see the daemon's log",
        )
    for found in port80.probe_all(ctx.daemon_token, port):
        where = f"[{found.host}]:80" if ":" in found.host else f"{found.host}:80"
        if found.verdict in ("tokenless", "token-required"):
            how = "and serves you without a token" if found.verdict == "tokenless" else "(a token is needed)"
            ctx.ok(f"{where} reaches your daemon through the port80 redirect {how}")
        elif found.verdict == "refused":
            ctx.problem(
                f"{where}: no redirect and nothing listening",
                "`curl localhost/creds/PROFILE` fails to connect",
                "rolebroker port80 --apply",
            )
        elif found.verdict == "foreign":
            ctx.problem(
                f"{where} reaches your daemon through a relay that hides who calls (ForeignUser)",
                "the old rolebroker-http relay units connect as their own user, so the daemon cannot "
                "tell you from anyone else; tokenless mode cannot work through them",
                "sudo systemctl disable --now rolebroker-http.socket rolebroker-http.service; "
                "then: rolebroker port80 --apply",
            )
        elif found.verdict == "not-rolebroker":
            ctx.problem(
                f"something that is not your rolebroker answers on {where} ({found.detail})",
                "another server holds port 80, or a redirect points elsewhere",
                "stop it (ss -ltnp 'sport = :80' shows it), then: rolebroker port80 --apply",
            )
        elif ":" in found.host:
            ctx.note(f"{where}: {found.detail or 'no answer'} (no IPv6 loopback here?)")
        else:
            ctx.problem(f"{where}: {found.detail or 'no answer'}", "", "rolebroker port80 --apply")


# -- output ------------------------------------------------------------------------------


def finding_lines(findings: list[Finding]) -> list[str]:
    """Each finding: its level and what, then why and the fix, aligned (every doctor section)."""
    width = max(len(level.value) for level in Level) + 2
    lines: list[str] = []
    for finding in findings:
        lines.append(f"  {finding.level.value:<{width}}{finding.what}")
        if finding.why:
            lines.append(f"  {'':<{width}}why: {finding.why}")
        if finding.fix:
            lines.append(f"  {'':<{width}}fix: {finding.fix}")
    return lines


def render(findings: list[Finding], settings: Settings) -> str:
    lines = [
        f"rolebroker doctor: daemon on {CLIENT_HOST}:{settings.port}, token file {settings.token_file}",
        "",
    ]
    lines += finding_lines(findings)
    problems = sum(f.level is Level.PROBLEM for f in findings)
    lines.append("")
    if problems == 1:
        lines.append("1 problem found; fix it, then run rolebroker doctor again.")
    elif problems:
        lines.append(f"{problems} problems found; fix them top to bottom, then run rolebroker doctor again.")
    else:
        lines.append("No problems found: SDKs in this environment get their credentials from rolebroker.")
    return "\n".join(lines) + "\n"


def has_problems(findings: list[Finding]) -> bool:
    return any(f.level is Level.PROBLEM for f in findings)
