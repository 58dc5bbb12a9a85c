#!/usr/bin/env python3
"""make deploy's first step: can this account grant the detector's reserved concurrency?

Lambda keeps part of an account's concurrency unreserved: 100, or the whole quota when
the quota is 100 or less (new accounts often have 10, so nothing can be reserved). A
reservation the account cannot grant fails the deploy about ten minutes in, after RDS is
created, into a rollback that cannot delete the deletion-protected database. So before
sam deploy, this reads `lambda get-account-settings` and says what it will do, e.g.

    account limit 10: deploying the detector unreserved (asked for 2; AWS keeps 10 unreserved)

The reservation asked for is DETECTOR_CONCURRENCY (make deploy DETECTOR_CONCURRENCY=N),
else DetectorReservedConcurrency in samconfig.toml's parameter_overrides, else the
deployed stack's, else 0 (unreserved). It only caps cost: the detector's per-stream
lease and conditional commit keep it correct at any concurrency.

Prints, on stdout, samconfig.toml's parameter_overrides with DetectorReservedConcurrency
set to what the account can grant (for sam deploy --parameter-overrides); messages go to
stderr.   infra/preflight.py --self-test   checks the decision without AWS.
"""

import os
import shlex
import sys

PARAM = "DetectorReservedConcurrency"


def kept_unreserved(limit: int) -> int:
    """What Lambda keeps unreserved: 100, or the whole quota below that."""
    return min(100, limit)


def decide(limit: int, unreserved: int, current: int, requested: int) -> tuple[int, str]:
    """(reservation to deploy, message). `current`: the detector's reservation today,
    which the update gives back to the pool before taking the new one."""
    keep = kept_unreserved(limit)
    available = max(0, unreserved + current - keep)
    if requested <= 0:
        return 0, f"account limit {limit}: deploying the detector unreserved ({PARAM}=0)"
    if requested <= available:
        return requested, (
            f"account limit {limit}, {unreserved} unreserved: reserving {requested} for the detector"
        )
    return 0, (
        f"account limit {limit}: deploying the detector unreserved (asked for {requested}; "
        f"AWS keeps {keep} unreserved, so {available} can be reserved). "
        "Ask for a higher Lambda concurrency quota to reserve it."
    )


def read_samconfig(path: str = "samconfig.toml") -> tuple[list[str], str]:
    """(parameter_overrides as Key=Value tokens, stack_name) of [default.deploy.parameters]."""
    if not os.path.exists(path):
        return [], ""
    import tomllib

    with open(path, "rb") as f:
        conf = tomllib.load(f)
    params = conf.get("default", {}).get("deploy", {}).get("parameters", {})
    overrides = params.get("parameter_overrides", [])
    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    return list(overrides), params.get("stack_name", "")


def template_parameters(path: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template.yaml")) -> set[str]:
    """The template's parameter names (the two-space keys under Parameters:)."""
    names, inside = set(), False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith(" ") and line.strip():
                inside = line.startswith("Parameters:")
            elif inside and line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
                names.add(line.strip()[:-1])
    return names


def known_only(overrides: list[str], names: set[str], quiet: bool = False) -> list[str]:
    """Drops (and reports) overrides of parameters the template no longer has, which
    sam deploy would refuse (e.g. NoChunkAlarmMinutes, replaced by the heartbeat alarm)."""
    kept = []
    for o in overrides:
        if o.split("=", 1)[0] in names:
            kept.append(o)
        elif not quiet:
            print(f"preflight: dropping {o.split('=', 1)[0]} from samconfig.toml's overrides: "
                  "the template has no such parameter any more", file=sys.stderr)
    return kept


def with_param(overrides: list[str], value: int) -> list[str]:
    kept = [o for o in overrides if not o.startswith(PARAM + "=")]
    return kept + [f"{PARAM}={value}"]


def self_test() -> None:
    cases = [
        # limit, unreserved, current, requested -> granted
        ((10, 10, 0, 0), 0),
        ((10, 10, 0, 1), 0),
        ((50, 50, 0, 2), 0),
        ((1000, 1000, 0, 5), 5),
        ((1000, 102, 0, 5), 0),
        ((1000, 100, 5, 5), 5),
        ((1000, 100, 5, 6), 0),
    ]
    for args, want in cases:
        got, msg = decide(*args)
        assert got == want, f"decide{args} = {got}, want {want}: {msg}"
        assert ("deploying the detector unreserved" in msg) == (got == 0), msg
    assert decide(10, 10, 0, 2)[1].startswith("account limit 10: deploying the detector unreserved")
    assert with_param(["A=1", f"{PARAM}=3", 'B="x y"'], 0) == ["A=1", 'B="x y"', f"{PARAM}=0"]
    names = template_parameters()
    assert {PARAM, "DatabaseMode", "AlarmEmail", "MaxLagChunks"} <= names and "NoChunkAlarmMinutes" not in names, names
    assert known_only(["DatabaseMode=create", "NoChunkAlarmMinutes=10"], names, quiet=True) == ["DatabaseMode=create"]
    print(f"preflight self-test: {len(cases)} reservation cases, samconfig merge ok", file=sys.stderr)


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    import boto3
    import botocore.exceptions

    overrides, stack = read_samconfig()
    overrides = known_only(overrides, template_parameters())
    stack = os.environ.get("STACK") or stack
    requested = os.environ.get("DETECTOR_CONCURRENCY", "")
    lam = boto3.client("lambda")
    current = 0
    try:
        settings = lam.get_account_settings()["AccountLimit"]
        if stack:
            try:
                current = lam.get_function_concurrency(FunctionName=f"{stack}-detector").get(
                    "ReservedConcurrentExecutions", 0
                ) or 0
            except lam.exceptions.ResourceNotFoundException:
                current = 0
        if not requested:
            requested = next((o.split("=", 1)[1] for o in overrides if o.startswith(PARAM + "=")), "")
        if not requested and stack:
            try:
                cf = boto3.client("cloudformation")
                found = cf.describe_stacks(StackName=stack)["Stacks"][0].get("Parameters", [])
                requested = next((p["ParameterValue"] for p in found if p["ParameterKey"] == PARAM), "")
            except botocore.exceptions.ClientError:
                requested = ""
    except botocore.exceptions.NoCredentialsError:
        print("preflight: no AWS credentials (aws configure, AWS_PROFILE or AWS_ACCESS_KEY_ID)", file=sys.stderr)
        return 1
    except botocore.exceptions.NoRegionError:
        print("preflight: no AWS region (AWS_REGION, or aws configure)", file=sys.stderr)
        return 1
    try:
        requested_n = int(requested or 0)
    except ValueError:
        print(f"preflight: {PARAM}={requested!r} is not a number", file=sys.stderr)
        return 1
    granted, message = decide(
        int(settings["ConcurrentExecutions"]),
        int(settings["UnreservedConcurrentExecutions"]),
        int(current),
        requested_n,
    )
    print(f"preflight: {message}", file=sys.stderr)
    print(" ".join(with_param(overrides, granted)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
