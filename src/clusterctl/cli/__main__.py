"""`python -m clusterctl.cli ...`: the same as the `clusterctl` command."""
from . import main

main()
