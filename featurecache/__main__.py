from featurecache.cli import main

raise SystemExit(main())
