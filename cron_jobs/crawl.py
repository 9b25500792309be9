"""Standalone crawler loop: ``python cron_jobs/crawl.py [--market M] [--until ISO]``.

Runs every configured market at each ``crawler.interval_seconds`` boundary (minute-aligned by
default), keeps going after a failed run, and on SIGTERM/SIGINT finishes the chunk in flight
and exits 0. It is ``stockex crawl`` without ``--once``; the loop lives in
:func:`stockex.crawler.run_forever`.
"""

from __future__ import annotations

import sys

from stockex.cli import main

if __name__ == "__main__":
    main(["crawl", *sys.argv[1:]])
