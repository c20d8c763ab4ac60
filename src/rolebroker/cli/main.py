"""The ``rolebroker`` command line: only the click group and its commands.

The commands live by concern in shell.py (client set-up), admin.py (looking after the
daemon) and serve.py (running one); none of them imports the daemon side at module level.
"""

from __future__ import annotations

import click

from rolebroker import __version__
from rolebroker.cli import admin, audit, docker, grants, helptopic, port80, serve, shell
from rolebroker.cli.containers import containers_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="rolebroker")
def cli() -> None:
    """A local ECS credentials endpoint: assumes, caches and refreshes the roles of your
    AWS profiles so that every SDK, the AWS CLI and Serverless get fresh credentials from
    AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9911/creds/PROFILE."""


for _command in (
    *serve.COMMANDS,
    *shell.COMMANDS,
    *grants.COMMANDS,
    *admin.COMMANDS,
    *audit.COMMANDS,
    *port80.COMMANDS,
    *docker.COMMANDS,
    containers_group,
    helptopic.help_command,
):
    cli.add_command(_command)


if __name__ == "__main__":
    cli()
