import sys

from arseq.cli import main

sys.exit(main())
