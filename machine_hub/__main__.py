from machine_hub.cli import main

main()
