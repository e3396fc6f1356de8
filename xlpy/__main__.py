import sys

from xlpy.cli import main

sys.exit(main())
