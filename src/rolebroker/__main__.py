from rolebroker.main import cli

cli()
