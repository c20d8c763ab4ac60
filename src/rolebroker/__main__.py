from rolebroker.cli.main import cli

cli()
