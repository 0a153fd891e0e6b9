from tgfs.cli import main

main()
