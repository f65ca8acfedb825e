import sys

from alphabus.cli import main

sys.exit(main())
