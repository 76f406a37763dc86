from detserve.cli import main

main()
