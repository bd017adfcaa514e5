"""``python -m mtaserver`` runs the CLI."""

from mtaserver.cli import main

raise SystemExit(main())
