"""The ``rolebroker`` command line: only the click group and where each command lives.

The commands live by concern (shell.py: client set-up; admin.py: looking after the daemon;
grants.py, audit.py, docker.py, containers.py, port80.py, serve.py, helptopic.py). A command's
module is imported only when that command runs (or help lists it), so
``eval "$(rolebroker env prod)"`` pays for one module, not for all of them; none of them
imports the daemon side at module level.
"""

from __future__ import annotations

import importlib

import click

from rolebroker import __version__

COMMAND_MODULES: dict[str, str] = {
    "env": "shell",
    "exec": "shell",
    "creds": "shell",
    "credential-process": "shell",
    "export": "shell",
    "status": "admin",
    "token": "admin",
    "reload": "admin",
    "mfa": "admin",
    "doctor": "admin",
    "grant": "grants",
    "grants": "grants",
    "audit": "audit",
    "port80": "port80",
    "docker-env": "docker",
    "docker": "docker",
    "containers": "containers",
    "serve": "serve",
    "demo": "serve",
    "help": "helptopic",
}
"""Command name -> module of rolebroker.cli whose ``COMMANDS`` holds it."""


class LazyGroup(click.Group):
    """Imports a command's module when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMAND_MODULES, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMAND_MODULES.get(cmd_name)
        if module_name is None:
            return super().get_command(ctx, cmd_name)
        module = importlib.import_module(f"rolebroker.cli.{module_name}")
        commands: tuple[click.Command, ...] = module.COMMANDS
        return next(command for command in commands if command.name == cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="rolebroker")
def cli() -> None:
    """A local ECS credentials endpoint: assumes, caches and refreshes the roles of your
    AWS profiles so that every SDK, the AWS CLI and Serverless get fresh credentials from
    AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9911/creds/PROFILE."""


if __name__ == "__main__":
    cli()
