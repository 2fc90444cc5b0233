"""``python -m server`` is ``voice-server``."""

from server.cli import main

raise SystemExit(main())
