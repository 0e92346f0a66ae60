import sys

from vlret.cli import main

sys.exit(main())
