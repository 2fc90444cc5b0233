"""``python -m scripts.bench_lib`` is ``scripts/bench``."""

from scripts.bench_lib.cli import main

raise SystemExit(main())
