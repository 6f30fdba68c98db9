"""One module per CLI subcommand; see :mod:`competition.cli` for the contract."""
