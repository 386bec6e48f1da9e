"""The HTML pages and figures picstory writes: run report, data check, sweep, monitor — one stylesheet, one toolkit."""
