"""A provisioning request: the targets, roles and variables one run of site.yml was asked for,
checked before anything runs; then the checks that run before the play (SSH and sudo, the plan).

`ktdeploy provision` and `ktdeploy download` build their runs here; `say` is how a caller shows a
line to the user (the CLI writes it to stderr).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from ktdeploy import connect, fleet, profiles, rolevars, variables
from ktdeploy.connect import HostProblem
from ktdeploy.errors import BadInput, Unreachable
from ktdeploy.preflight import PlanOptions, preflight_or_raise
from ktdeploy.resources import playbooks_dir
from ktdeploy.targets import Target, inventory_from_targets, parse_targets, targets_from_inventory

Say = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass
class ProvisionRequest:
    """Everything one provisioning run was asked to do, validated."""

    targets: list[Target]
    inventory: dict | str
    limit: list[str] | None = None
    tags: list[str] = field(default_factory=list)
    skip_tags: list[str] = field(default_factory=list)
    extravars: dict = field(default_factory=dict)
    check: bool = False
    warnings: list[str] = field(default_factory=list)  # for the user: -e names no role reads
    key: str = ""  # which fleet this is (fleet.request_key): runs of the same key share the retry list
    retry_note: str = ""  # --retry-failed: which record the hosts come from, or why there are none

    @property
    def hostvars(self) -> dict[str, dict]:
        return {t.name: t.ansible_vars() for t in self.targets}

    def narrow(self, names: list[str]) -> None:
        """Keep only these targets (the ones that passed the connection check, or the ones to retry)."""
        self.targets = [t for t in self.targets if t.name in names]
        if isinstance(self.inventory, dict):
            self.inventory = inventory_from_targets(self.targets)
        else:
            self.limit = [t.name for t in self.targets]


# Ansible's special tags: not roles, so --only/--skip refuse them.
SPECIAL_TAGS = ("always", "never", "all", "tagged", "untagged")


def _site_roles() -> list[tuple[str, list[str]]]:
    """(role, its tags) for every role in playbooks/site.yml."""
    plays = yaml.safe_load((playbooks_dir() / "site.yml").read_text()) or []
    out = []
    for play in plays:
        for role in play.get("roles") or []:
            if not isinstance(role, dict):
                continue
            role_tags = role.get("tags", [])
            out.append((str(role.get("role", "")), [role_tags] if isinstance(role_tags, str) else list(role_tags)))
    return out


def site_roles() -> list[str]:
    """The roles of playbooks/site.yml, in the order the play applies them."""
    return [role for role, _ in _site_roles()]


def site_role_tags() -> list[str]:
    """The tags given to roles in playbooks/site.yml (what --only and --skip accept)."""
    return sorted({t for _, tags in _site_roles() for t in tags if t not in SPECIAL_TAGS})


def required_role_tags() -> list[str]:
    """The tags of roles that run whatever --only says (tag `always`): --skip may not name them."""
    return sorted({t for _, tags in _site_roles() if "always" in tags for t in tags if t not in SPECIAL_TAGS})


def split_list(values: tuple[str, ...]) -> list[str]:
    """Repeatable comma-separated option values (`--limit a,b --limit c`) as one list."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def role_tags(values: tuple[str, ...], option: str) -> list[str]:
    wanted = split_list(values)
    valid = site_role_tags()
    unknown = [t for t in wanted if t not in valid]
    if unknown:
        raise BadInput(
            f"{option}: unknown role(s) {', '.join(unknown)}",
            hint=f"use roles from playbooks/site.yml: {', '.join(valid) or '(none defined yet)'}",
        )
    return wanted


def only_and_skip(only: tuple[str, ...], skip: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """--only and --skip as tags; BadInput for an unknown role, a role in both, a role that must run."""
    tags, skip_tags = role_tags(only, "--only"), role_tags(skip, "--skip")
    both = [t for t in tags if t in skip_tags]
    if both:
        raise BadInput(f"{', '.join(both)} is named by both --only and --skip",
                       hint="name each role in one of them")
    required = [t for t in skip_tags if t in required_role_tags()]
    if required:
        raise BadInput(f"--skip {', '.join(required)}: the {required[0]} role cannot be skipped; "
                       "every later role reads the plan it makes (it changes nothing on the host)",
                       hint=f"leave {required[0]} out of --skip; to run some roles only, use --only ROLE,...")
    return tags, skip_tags


def parse_extravars(pairs: tuple[str, ...]) -> dict:
    """`-e KEY=VALUE` pairs as a dict (values stay strings, as Ansible's `-e key=value` has them).

    BadInput (exit 2) for a pair that is not KEY=VALUE or a port variable that is no port.
    """
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise BadInput(f"-e {pair!r} is not KEY=VALUE", hint="pass variables as -e name=value")
        out[key] = value
    variables.check_ports(out)
    return out


def build_request(hosts, inventory, limit, only, skip, extra, check, profile=None,
                  retry_failed: bool = False) -> ProvisionRequest:
    """The request for these command-line values; BadInput (exit 2) before anything runs.

    retry_failed: only the hosts the last recorded run of the same inventory (or the same named
    hosts) left unconverged (`fleet.latest`); none left gives a request without targets and a note.
    """
    if retry_failed and limit:
        raise BadInput("give --limit or --retry-failed, not both",
                       hint="--retry-failed picks the hosts itself: those the last run did not converge")
    if hosts and inventory:
        raise BadInput("give hosts or -i INVENTORY, not both",
                       hint="to pick hosts from an inventory, use -i INVENTORY --limit HOST,...")
    if not hosts and not inventory:
        raise BadInput("no target given", hint="name hosts (HOST, USER@HOST, USER@HOST:PORT) or pass -i INVENTORY")
    wanted = split_list(limit) or None
    if inventory:
        targets = targets_from_inventory(inventory, limit=wanted)
        inv: dict | str = str(inventory)
    else:
        targets = parse_targets(list(hosts))
        names = [t.name for t in targets]
        unknown = [n for n in wanted or [] if n not in names]
        if unknown:
            raise BadInput(f"--limit names host(s) not given: {', '.join(unknown)}",
                           hint=f"use one of: {', '.join(names)}")
        # Selected here rather than by Ansible's --limit: names like HOST:PORT are not patterns.
        targets = [t for t in targets if not wanted or t.name in wanted]
        inv, wanted = inventory_from_targets(targets), None
    tags, skip_tags = only_and_skip(only, skip)
    given = parse_extravars(extra)
    if inventory:
        for t in targets:
            variables.check_ports({k: v for k, v in t.hostvars.items() if k not in given},
                                  where=f"inventory {inventory}", host=t.name)
    request = ProvisionRequest(
        targets=targets, inventory=inv, limit=wanted,
        tags=tags, skip_tags=skip_tags,
        extravars={**(profiles.load(profile) if profile else {}), **given}, check=check,
        warnings=variables.unknown_warnings(given),
        key=fleet.request_key(inventory if inventory else inv, [t.name for t in targets]),
    )
    if retry_failed:
        _retry_only(request, inventory or " ".join(hosts))
    return request


def _retry_only(request: ProvisionRequest, what: str) -> None:
    """Narrow the request to the hosts the last recorded run of this fleet did not converge."""
    found = fleet.latest(request.key)
    if found is None:
        raise BadInput(f"--retry-failed: no earlier provision run of {what} is among the kept run records "
                       "(the last 20 runs are kept)",
                       hint="run the same command without --retry-failed")
    path, data = found
    names = [t.name for t in request.targets]
    retry = [h for h in data.get("retry", []) if h in names]
    gone = [h for h in data.get("retry", []) if h not in names]
    if gone:
        request.warnings.append(f"warning: --retry-failed: {', '.join(gone)} (recorded in {path}) "
                                f"are no longer among the targets; left out")
    request.narrow(retry)
    request.retry_note = (f"--retry-failed: {len(retry)} host(s) the earlier runs left unconverged "
                          f"({', '.join(retry)}; recorded in {path})" if retry else
                          f"--retry-failed: nothing to retry; the last recorded run of {what} ({path}) "
                          "left no host unconverged")


def settings(request: ProvisionRequest, target: Target) -> dict:
    """The variables the play will see for this host: its inventory vars, then profile and -e."""
    return {**target.hostvars, **request.extravars}


def plan_options(request: ProvisionRequest, target: Target) -> PlanOptions:
    """The plan role's variables as preflight options, resolved from the role defaults as the role
    resolves them (`ktdeploy.rolevars`): an inventory that sets only base_data_dir moves the model dir too."""
    resolved = rolevars.plan_settings(target.name, settings(request, target))
    resolved.pop("force")
    return PlanOptions(**resolved)


def preflight(request: ProvisionRequest, force: bool = False, say: Say = _stderr) -> None:
    """Plan every host from its live facts; stop before anything changes when a plan cannot work.

    Raises PlanProblem (exit 4) unless forced (--force, or plan_force for that host). The plan role
    at the head of site.yml makes the same plan again on the host, from the same module.
    """
    say(f"Planning {len(request.targets)} host(s) from their hardware...")
    plans = preflight_or_raise(
        request.targets,
        lambda t: plan_options(request, t),
        force=lambda t: force or rolevars.plan_settings(t.name, settings(request, t))["force"],
    )
    for name, plan in plans.items():
        for finding in plan.problems:
            say(f"{name}: problem (forced past): {finding.message}")
        for finding in plan.warnings:
            say(f"{name}: warning: {finding.message}")
    if force:
        request.extravars["plan_force"] = True


def check_fleet(request: ProvisionRequest, say: Say = _stderr,
                max_fail_percentage: int | None = None) -> list[HostProblem]:
    """SSH and passwordless sudo on every host; the hosts that pass go on, the others are returned.

    Each host not ready gets one line. When none is ready, or more than `max_fail_percentage` of
    them are not (0: any), Unreachable (exit 3) before anything changes; otherwise the request is
    narrowed to the ready hosts and the problems are returned for the summary.
    """
    say(f"Checking SSH and sudo on {len(request.targets)} host(s)...")
    problems = connect.check_hosts(request.inventory, request.hostvars, limit=request.limit)
    if not problems:
        return []
    for p in problems:
        say(p.line())
    total = len(request.targets)
    if len(problems) >= total:
        raise Unreachable(f"{len(problems)} of {total} host(s) not ready; nothing was changed")
    if max_fail_percentage is not None and 100 * len(problems) / total > max_fail_percentage:
        raise Unreachable(f"{len(problems)} of {total} host(s) not ready, more than --max-fail-percentage "
                          f"{max_fail_percentage} allows; nothing was changed")
    bad = {fleet_name(p.host, request) for p in problems}
    request.narrow([t.name for t in request.targets if t.name not in bad])
    say(f"Going on with the {len(request.targets)} ready host(s); the summary at the end names the others.")
    return problems


def fleet_name(host: str, request: ProvisionRequest) -> str:
    """The target name of a host as Ansible reported it (Ansible reads HOST:PORT as HOST)."""
    names = [t.name for t in request.targets]
    return host if host in names else next((t.name for t in request.targets if t.host == host), host)


def runs_role(request: ProvisionRequest, role: str) -> bool:
    """Whether the run applies this role's tag (--only / --skip; `when` conditions aside)."""
    return (not request.tags or role in request.tags) and role not in request.skip_tags


def serial_value(value: str | None) -> str | None:
    """--serial N or N%: Ansible's batch size; BadInput (exit 2) for anything else."""
    if value is None:
        return None
    text = value.strip()
    number = text[:-1] if text.endswith("%") else text
    if not number.isdigit() or int(number) < 1 or (text.endswith("%") and int(number) > 100):
        raise BadInput(f"--serial {value!r} is not a batch size",
                       hint="give a number of hosts (--serial 2) or a share of them (--serial 25%)")
    return text


def check_connections(request: ProvisionRequest, say: Say = _stderr) -> None:
    """SSH and passwordless sudo on every host; Unreachable (exit 3), one line per host, if not."""
    say(f"Checking SSH and sudo on {len(request.targets)} host(s)...")
    hostvars = {t.name: t.ansible_vars() for t in request.targets}
    problems = connect.check_hosts(request.inventory, hostvars, limit=request.limit)
    if problems:
        for problem in problems:
            say(problem.line())
        raise Unreachable(f"{len(problems)} of {len(request.targets)} host(s) not ready; nothing was changed")
