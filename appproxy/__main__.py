"""C{python -m appproxy}: the same as the C{appproxy} command."""

from appproxy.cli.main import main

raise SystemExit(main())
