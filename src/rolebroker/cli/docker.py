"""``rolebroker docker-env`` and ``rolebroker docker run``: one grant per container.

A container gets a grant of its own (``POST /grants``), never the master token, and talks to
the daemon's container listener at 169.254.170.2 (set up once with ``rolebroker containers
setup --apply``). ``docker run`` passes the grant through the environment of the docker
client (``--env NAME`` without a value), so it never appears in a command line that ``ps``
shows to other users.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from rolebroker.cli.client import DaemonClient, creds_path
from rolebroker.cli.containers_setup import ADDRESS as CONTAINER_ADDRESS
from rolebroker.cli.grantclient import new_grant
from rolebroker.cli.grants import duration
from rolebroker.cli.options import daemon_options, daemon_settings, reported
from rolebroker.cli.shell import EXEC_FAILED, ExecError, options_first
from rolebroker.cli.shellenv import FULL_URI, RELATIVE_URI, TOKEN, read_aws_config
from rolebroker.grantcode import DEFAULT_EXEC_TTL

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_.-"


@dataclass(frozen=True, slots=True)
class ContainerEnv:
    """The variables a container needs, in order; ``grant_name`` is for messages."""

    variables: tuple[tuple[str, str], ...]
    grant_name: str
    expires_at: str | None

    def as_flags(self) -> str:
        return " ".join(f"--env {shlex.quote(f'{k}={v}')}" for k, v in self.variables)

    def as_env_file(self) -> str:
        """docker's env-file syntax: NAME=value per line, no quoting (values have no newline)."""
        return "".join(f"{k}={v}\n" for k, v in self.variables)


def container_env(
    profile: str, grant: str, grant_name: str, expires_at: str | None, *, relative: bool, region: str | None
) -> ContainerEnv:
    """FULL_URI + token (the SDK sends the grant as Authorization), or RELATIVE_URI alone
    (the grant is the path: for SDKs and tools that only know the ECS relative form)."""
    if relative:
        variables = [(RELATIVE_URI, f"/v2/credentials/{grant}")]
    else:
        variables = [(FULL_URI, f"http://{CONTAINER_ADDRESS}{creds_path(profile)}"), (TOKEN, grant)]
    if region:
        variables += [("AWS_REGION", region), ("AWS_DEFAULT_REGION", region)]
    return ContainerEnv(tuple(variables), grant_name, expires_at)


def _granted(
    profile: str,
    ttl: str | None,
    name: str | None,
    relative: bool,
    port: int | None,
    token_file: Path | None,
    error: type[click.ClickException] = click.ClickException,
) -> ContainerEnv:
    settings = daemon_settings(port, token_file)
    seconds = duration(ttl)
    with reported(error):
        answer = new_grant(
            DaemonClient(settings), [profile], DEFAULT_EXEC_TTL if seconds is None else seconds, name
        )
    region = read_aws_config(os.environ, profile).region
    return container_env(
        profile,
        answer["grant"],
        str(answer.get("name") or name or "?"),
        answer.get("expires_at"),
        relative=relative,
        region=region,
    )


_TTL_HELP = f"How long the grant lives: 90s, 30m, 2h, 1d [default: {int(DEFAULT_EXEC_TTL // 3600)}h]"


@click.command("docker-env")
@click.argument("profile")
@click.option("--ttl", help=_TTL_HELP)
@click.option(
    "--relative",
    is_flag=True,
    help="Use AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/GRANT alone (no token variable)",
)
@click.option("--env-file", "env_file", is_flag=True, help="Print docker env-file lines (NAME=value)")
@click.option("--name", help="The grant's name (shown by `rolebroker grant --list` and in the audit log)")
@daemon_options
def docker_env_command(
    profile: str,
    ttl: str | None,
    relative: bool,
    env_file: bool,
    name: str | None,
    port: int | None,
    token_file: Path | None,
) -> None:
    """Make a grant for PROFILE and print the environment a container needs for it.

    \b
    rolebroker docker-env prod --env-file > prod.env && docker run --env-file prod.env IMAGE
    docker run $(rolebroker docker-env prod) IMAGE     # the grant shows in `ps` meanwhile

    The container reaches the daemon at 169.254.170.2 (run `rolebroker containers setup
    --apply` once). The grant covers PROFILE only; revoke it with `rolebroker grant --revoke NAME`.
    """
    planned = _granted(profile, ttl, name, relative, port, token_file)
    until = planned.expires_at or "never"
    click.echo(f"rolebroker: grant {planned.grant_name} for {profile}, expires {until}", err=True)
    if env_file:
        click.echo(planned.as_env_file(), nl=False)
    else:
        click.echo(
            "rolebroker: note: as docker run arguments the grant shows in `ps` while docker runs; "
            "--env-file (or rolebroker docker run) keeps it off command lines",
            err=True,
        )
        click.echo(planned.as_flags())


class DockerRunCommand(click.Command):
    """``docker run PROFILE [OPTIONS] [--] DOCKER-RUN-ARGS...``: as ``exec``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, options_first(self, ctx, args))


def container_name(args: Sequence[str]) -> str | None:
    """The ``--name`` given to docker run, if any (before the image: later ones are the command's)."""
    for i, arg in enumerate(args):
        if arg == "--name" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--name="):
            return arg.split("=", 1)[1]
        if arg == "--":
            break
    return None


def grant_name_for(container: str) -> str:
    cleaned = "".join(c if c in _NAME_CHARS else "-" for c in container.lower())[:50].strip(".-_")
    return f"docker:{cleaned or 'run'}"


def run_argv(tool: str, container: str, env: ContainerEnv, args: Sequence[str], named: bool) -> list[str]:
    """``tool run --env NAME ... [--name N] ARGS``: names only, the values come from the
    client's environment, so no grant is on a command line."""
    flags = [part for name, _ in env.variables for part in ("--env", name)]
    return [tool, "run", *flags, *([] if named else ["--name", container]), *args]


def run_environment(env: ContainerEnv, environ: Mapping[str, str]) -> dict[str, str]:
    return {**environ, **dict(env.variables)}


@click.group("docker")
def docker_group() -> None:
    """Run containers with a grant of their own (see `rolebroker docker run --help`)."""


@docker_group.command("run", cls=DockerRunCommand, context_settings={"allow_interspersed_args": False})
@click.option("--ttl", help=_TTL_HELP)
@click.option("--podman", is_flag=True, help="Run podman instead of docker")
@click.option("--relative", is_flag=True, help="Use AWS_CONTAINER_CREDENTIALS_RELATIVE_URI alone")
@daemon_options
@click.argument("profile")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def docker_run_command(
    profile: str,
    args: Sequence[str],
    ttl: str | None,
    podman: bool,
    relative: bool,
    port: int | None,
    token_file: Path | None,
) -> None:
    """`docker run` (or `podman run`) with a grant for PROFILE, named after the container.

    \b
    rolebroker docker run prod -- --rm -it amazon/aws-cli sts get-caller-identity
    rolebroker docker run prod --podman -- --name job1 my-image

    The grant lives --ttl (default 12h) and is named docker:CONTAINER (`--name` in the docker
    arguments, else a generated name that is also given to docker). rolebroker is replaced
    by docker (exec). Exit 125 if the grant cannot be made.
    """
    docker_args = list(args[1:] if args[:1] == ("--",) else args)
    if not docker_args:
        raise click.UsageError("give docker run's arguments after --, at least the image")
    given = container_name(docker_args)
    generated = "".join(c if c in _NAME_CHARS else "-" for c in profile.lower()[:20])
    container = given or f"rb-{generated}-{secrets.token_hex(3)}"
    planned = _granted(profile, ttl, grant_name_for(container), relative, port, token_file, ExecError)
    tool = "podman" if podman else "docker"
    argv = run_argv(tool, container, planned, docker_args, named=given is not None)
    click.echo(
        f"rolebroker: grant {planned.grant_name} for {profile} (expires {planned.expires_at or 'never'})",
        err=True,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(tool, argv, run_environment(planned, os.environ))  # noqa: S606  (exec, no shell)
    except FileNotFoundError:
        click.echo(f"rolebroker: command not found: {tool}", err=True)
        sys.exit(127)
    except OSError as exc:
        click.echo(f"rolebroker: cannot run {tool}: {exc.strerror}", err=True)
        sys.exit(EXEC_FAILED + 1)


COMMANDS: tuple[click.Command, ...] = (docker_env_command, docker_group)
