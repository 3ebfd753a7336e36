"""Exit codes of every ktdeploy command (documented in README.md, "Exit codes")."""

OK = 0
FAILED = 1  # a task failed on at least one host, or a check found a problem
BAD_INPUT = 2  # bad arguments, inventory or configuration; nothing was changed
UNREACHABLE = 3  # at least one host could not be reached (SSH refused, timeout, no sudo)
PLAN_PROBLEM = 4  # preflight found that the plan cannot work (override with --force)
NOT_READY = 5  # status: a host is not serving yet (provisioning, downloading, starting); nothing failed
