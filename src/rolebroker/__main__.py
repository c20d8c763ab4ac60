from rolebroker.cli.quick import main

main()
