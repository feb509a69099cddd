from neurocache.cli import main

raise SystemExit(main())
