"""C{python -m appproxy}: the same as the C{appproxy} command."""

from appproxy.cli import main

raise SystemExit(main())
