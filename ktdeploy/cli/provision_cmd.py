"""`ktdeploy provision`: converge hosts with the shipped playbook (filled in by the engine work)."""

COMMANDS: list = []
