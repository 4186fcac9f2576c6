"""The test suite (a package, so its modules import as ``tests.*``: ``python -m tests.crash_worker``).

Compiled modules are cached (``__pycache__/``, ignored by git and .dockerignore) even where the machine sets
PYTHONDONTWRITEBYTECODE: without the cache each pytest-xdist worker rewrites and compiles every test module
and the package again, and so does every ``imagine-bot`` or worker subprocess a test starts (seconds each on
2 cores): the first process to import a module writes its cache, and the others read it.
"""

import sys

sys.dont_write_bytecode = False
