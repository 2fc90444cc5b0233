from scripts.chaos_lib.cli import main

raise SystemExit(main())
