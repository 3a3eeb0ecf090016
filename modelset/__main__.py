from modelset.cli import main

main()
