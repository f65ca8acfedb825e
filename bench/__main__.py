"""``python -m bench`` (``make bench``): see bench/__init__.py for what is measured."""

from bench.cli import main

raise SystemExit(main())
