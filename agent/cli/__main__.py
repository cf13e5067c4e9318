"""``python -m agent.cli``: the ``alpacon-agent`` command without its installed script."""

from __future__ import annotations

import sys

from agent.cli.main import main

sys.exit(main())
