"""`ktdeploy lab`: throwaway systemd hosts for rehearsals and tests (filled in by the lab work)."""

COMMANDS: list = []
