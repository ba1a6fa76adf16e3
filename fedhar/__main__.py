import sys

from fedhar.cli import main

sys.exit(main())
