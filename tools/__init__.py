"""Developer tools run from the repository root, not shipped in the prlm package.

- `python -m tools.loadtest`: concurrent clients mixing profile writes and generations against a server.
- `python -m tools.faulttest`: SIGKILL `prlm serve` during writes, restart it, check nothing acknowledged was lost.
"""
