import sys

from videostyle.cli.main import main

sys.exit(main())
