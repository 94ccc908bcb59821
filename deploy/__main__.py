"""``python deploy -i ... -o ... -m ...``, and the entry point of a MAP packaged from this folder."""

import sys

from app import main

if __name__ == "__main__":
    sys.exit(main())
