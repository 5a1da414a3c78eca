from imgclass.cli import main

main()
