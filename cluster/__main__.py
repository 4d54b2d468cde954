"""`python -m cluster ...` is `yard ...` (useful where the console script is not installed)."""
from cluster.cli import main

raise SystemExit(main())
