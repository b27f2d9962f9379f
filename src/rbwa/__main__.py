from rbwa.cli import main

raise SystemExit(main())
