from rvgen.cli import main

main()
