from featurecache.app.cli import main

raise SystemExit(main())
