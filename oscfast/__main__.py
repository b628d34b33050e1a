"""``python -m oscfast`` is the command-line interface."""
from oscfast.cli import main

raise SystemExit(main())
