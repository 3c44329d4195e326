from vip_bundles.cli import main

main()
