"""``python -m gradviz`` entry point."""

from gradviz.cli import main

raise SystemExit(main())
