"""prlm's benchmark suite: `make bench` (python -m bench). See bench/run.py."""
