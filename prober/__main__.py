from prober.shell.cli import main

main()
