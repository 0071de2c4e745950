import sys

from fastdyn.cli import main

sys.exit(main())
