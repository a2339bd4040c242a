"""`python -m fmnist ...` (and `torchrun -m fmnist train ...`) run the CLI."""

from fmnist import cli

raise SystemExit(cli.main())
