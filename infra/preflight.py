#!/usr/bin/env python3
"""make deploy's first and last steps: what the account and the stack allow, checked
before sam deploy, and what to do after it.

Before (`infra/preflight.py`), each with a message on stderr:

- the stack name: at most 55 characters, or `<stack>-db-setup` is not a valid Lambda
  function name (64) and the create fails after the database is made. A template Rule
  cannot check this: Rules compare parameter values and cannot measure a string.
- how a failure is handled: a stack that has not been created yet is created with
  rollback disabled (`--disable-rollback`), so a failed first create keeps what it made
  instead of rolling back into ROLLBACK_FAILED on the deletion-protected database; the
  next `make deploy` continues it, `make teardown` removes it. Updates roll back as usual
  (`--no-disable-rollback`, whatever samconfig.toml says). A stack in a state that cannot
  be updated (ROLLBACK_COMPLETE, ...) stops here with what to run.
- the detector's reservation: Lambda keeps 100 executions unreserved, or the whole quota
  when it is 100 or less (new accounts often have 10). A reservation the account cannot
  grant is deployed unreserved instead, e.g.
      account limit 10: deploying the detector unreserved (asked for 2; AWS keeps 10 unreserved)
  It only caps cost: the per-stream lease and conditional commit keep it correct.
- the detector's memory: new accounts cap Lambda memory at 3,008 MB as well as
  concurrency. No API reports the memory cap; the reduced concurrency quota (below the
  standard 1,000) is the sign of it, so DetectorMemory above 3008 stops here with what to
  ask AWS for (SKIP_MEMORY_CHECK=1 once the cap is lifted).
- existing database in a VPC: the subnets must reach S3, DynamoDB and Secrets Manager
  (gateway or interface endpoints, or a NAT route); a Lambda in a VPC without them hangs
  until its timeout. An internet gateway does not count: Lambda's interfaces get no
  public address.
- AlarmEmail empty: a warning that the alarms notify no one.
- a stack whose database was made before the template named its instance: updating it
  would replace the database with an empty one, so it stops.

Prints on stdout two lines for sam deploy: its failure flag, then samconfig.toml's
parameter_overrides with DetectorReservedConcurrency set to what the account can grant.

After (`infra/preflight.py --after <sam deploy's exit status>`): on a failed first create,
how to continue; on success, whether the alarm e-mail is confirmed and how to test that an
alarm arrives (`aws cloudwatch set-alarm-state`).

A parameter's value is, in order: the make variable (DETECTOR_CONCURRENCY, DETECTOR_MEMORY),
samconfig.toml's parameter_overrides, the deployed stack's, the template's default.
`infra/preflight.py --self-test` checks the decisions without AWS; make deploy-check runs
the subnet check and the whole preflight against moto.
"""

import os
import re
import shlex
import sys

RESERVATION = "DetectorReservedConcurrency"
TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template.yaml")
# Lambda function names are at most 64 characters; the longest the template makes is
# <stack>-db-setup (and <stack>-detector), 9 more than the stack name.
MAX_STACK_NAME = 64 - len("-db-setup")
# New accounts' reduced quotas: Lambda memory up to 3,008 MB, concurrency below 1,000.
NEW_ACCOUNT_MEMORY_MB = 3008
STANDARD_CONCURRENCY = 1000
# What the detector calls from its subnets.
SERVICES = ("s3", "dynamodb", "secretsmanager")


def say(msg: str) -> None:
    print(f"preflight: {msg}", file=sys.stderr)


# ------------------------------------------------------------------ decisions
def kept_unreserved(limit: int) -> int:
    """What Lambda keeps unreserved: 100, or the whole quota below that."""
    return min(100, limit)


def decide(limit: int, unreserved: int, current: int, requested: int) -> tuple[int, str]:
    """(reservation to deploy, message). `current`: the detector's reservation today,
    which the update gives back to the pool before taking the new one."""
    keep = kept_unreserved(limit)
    available = max(0, unreserved + current - keep)
    if requested <= 0:
        return 0, f"account limit {limit}: deploying the detector unreserved ({RESERVATION}=0)"
    if requested <= available:
        return requested, (
            f"account limit {limit}, {unreserved} unreserved: reserving {requested} for the detector"
        )
    return 0, (
        f"account limit {limit}: deploying the detector unreserved (asked for {requested}; "
        f"AWS keeps {keep} unreserved, so {available} can be reserved). "
        "Ask for a higher Lambda concurrency quota to reserve it."
    )


def stack_name_problem(name: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", name):
        return f"{name!r} is not a CloudFormation stack name (a letter, then letters, digits and -)"
    if len(name) > MAX_STACK_NAME:
        return (f"the stack name {name!r} has {len(name)} characters; at most {MAX_STACK_NAME}, or "
                f"'{name}-db-setup' ({len(name) + 9}) is longer than Lambda's 64-character function "
                "names and the create fails after the database is made. Choose a shorter STACK.")
    return None


def memory_problem(concurrency_limit: int, memory_mb: int) -> str | None:
    if memory_mb <= NEW_ACCOUNT_MEMORY_MB or concurrency_limit >= STANDARD_CONCURRENCY:
        return None
    return (f"DetectorMemory={memory_mb} MB, but this account still has a new account's reduced "
            f"Lambda quotas (concurrency limit {concurrency_limit}, the standard is "
            f"{STANDARD_CONCURRENCY}), which also cap function memory at {NEW_ACCOUNT_MEMORY_MB} MB: "
            "creating the detector would fail. Deploy with DetectorMemory of "
            f"{NEW_ACCOUNT_MEMORY_MB} or less (docs/capacity.md: about 47 M pairs), or ask AWS first: "
            "Service Quotas console > AWS Lambda > Concurrent executions, request 1000, and a "
            "support case (Service limit increase, Lambda) to lift the 3,008 MB function memory "
            "limit. Once it is lifted, SKIP_MEMORY_CHECK=1 skips this check.")


# Stack states sam deploy can update; anything else is told what to do.
UPDATABLE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "UPDATE_FAILED",
             "IMPORT_COMPLETE", "IMPORT_ROLLBACK_COMPLETE"}


def failure_mode(status: str | None) -> tuple[str, str | None, str | None]:
    """(sam deploy flag, message, problem) for a stack in `status` (None: no stack)."""
    if status in (None, "REVIEW_IN_PROGRESS"):
        return "--disable-rollback", (
            "first create, with rollback disabled: if it fails, what it made is kept (no rollback "
            "into ROLLBACK_FAILED on the protected database). Fix the cause and run make deploy "
            "again to continue, or make teardown to remove it all."), None
    if status == "CREATE_FAILED":
        return "--disable-rollback", (
            "the first create failed earlier and kept what it made: this deploy continues it"), None
    if status in UPDATABLE:
        return "--no-disable-rollback", None, None
    if status.endswith("_IN_PROGRESS"):
        return "", None, f"the stack is {status}: wait until it finishes, then run make deploy again"
    if status == "UPDATE_ROLLBACK_FAILED":
        return "", None, ("the stack is UPDATE_ROLLBACK_FAILED: fix what the events name, run "
                          "aws cloudformation continue-update-rollback, then make deploy")
    return "", None, (f"the stack is {status} and cannot be updated: make teardown removes it "
                      "(lifting deletion protection, emptying the bucket), then make deploy creates it again")


def database_problem(mode: str, database_id: str | None, stack_id: str | None) -> str | None:
    """The template names the instance txpipe-<stack UUID> (for its log group). A
    database made before that has another name, and the update would replace it."""
    if mode != "create" or not database_id or not stack_id:
        return None
    want = "txpipe-" + stack_id.split("/")[2]
    if database_id.lower() == want:
        return None
    return (f"this stack's database {database_id} was created before the template named its "
            f"instance ({want}, so that the stack owns its log group); this deploy would replace it "
            "with an empty one. Deploy this stack from the commit it was made with, or move the "
            "data first (snapshot, then restore into a new stack).")


def alarm_email_warning(email: str) -> str | None:
    if email.strip():
        return None
    return ("AlarmEmail is empty: the alarms notify no one. Deploy with AlarmEmail=<address> "
            "(sam deploy --parameter-overrides ... or samconfig.toml), or subscribe to the topic yourself.")


# ------------------------------------------------------------------ parameters
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


def template_parameters(path: str = TEMPLATE) -> dict[str, str]:
    """The template's parameters and their defaults (the two-space keys under
    Parameters:, and their four-space Default:)."""
    params, inside, current = {}, False, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith(" ") and line.strip():
                inside = line.startswith("Parameters:")
            elif inside and line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
                current = line.strip()[:-1]
                params[current] = ""
            elif inside and current and line.startswith("    Default:"):
                params[current] = line.split(":", 1)[1].strip().strip('"')
    return params


def known_only(overrides: list[str], names, quiet: bool = False) -> list[str]:
    """Drops (and reports) overrides of parameters the template no longer has, which
    sam deploy would refuse (e.g. NoChunkAlarmMinutes, replaced by the heartbeat alarm)."""
    kept = []
    for o in overrides:
        if o.split("=", 1)[0] in names:
            kept.append(o)
        elif not quiet:
            say(f"dropping {o.split('=', 1)[0]} from samconfig.toml's overrides: "
                "the template has no such parameter any more")
    return kept


def with_param(overrides: list[str], name: str, value) -> list[str]:
    kept = [o for o in overrides if not o.startswith(name + "=")]
    return kept + [f"{name}={value}"]


def effective(name: str, given: str, overrides: list[str], deployed: dict[str, str], defaults: dict[str, str]) -> str:
    """A parameter's value for this deploy: the make variable, samconfig.toml, the
    deployed stack (sam deploy keeps a value left out), the template's default."""
    if given:
        return given
    for o in overrides:
        if o.startswith(name + "="):
            return o.split("=", 1)[1].strip('"')
    if name in deployed:
        return deployed[name]
    return defaults.get(name, "")


# ------------------------------------------------------------------ the subnets' way out
def subnet_paths(ec2, region: str, subnet_ids: list[str]) -> dict[str, dict[str, str | None]]:
    """For each subnet, how it reaches each of SERVICES: 'gateway endpoint vpce-…',
    'interface endpoint vpce-…', 'NAT (<target>)', or None. A subnet without its own
    route table association uses its VPC's main route table."""
    subnets = ec2.describe_subnets(SubnetIds=subnet_ids)["Subnets"]
    paths = {}
    for vpc in sorted({s["VpcId"] for s in subnets}):
        tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["RouteTables"]
        main = next((t for t in tables if any(a.get("Main") for a in t.get("Associations", []))), None)
        by_subnet = {a["SubnetId"]: t for t in tables for a in t.get("Associations", []) if a.get("SubnetId")}
        endpoints = [e for e in ec2.describe_vpc_endpoints(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}])["VpcEndpoints"]
            if e.get("State", "available").lower() == "available"]
        for s in (s for s in subnets if s["VpcId"] == vpc):
            table = by_subnet.get(s["SubnetId"], main) or {"Routes": [], "RouteTableId": None}
            nat = next((r for r in table.get("Routes", []) if r.get("DestinationCidrBlock") == "0.0.0.0/0"
                        and r.get("State", "active") == "active"
                        and (r.get("NatGatewayId") or r.get("TransitGatewayId") or r.get("NetworkInterfaceId")
                             or r.get("InstanceId"))), None)
            found = {}
            for service in SERVICES:
                name = f"com.amazonaws.{region}.{service}"
                how = None
                for e in endpoints:
                    if e.get("ServiceName") != name:
                        continue
                    if e.get("VpcEndpointType") == "Gateway" and table["RouteTableId"] in e.get("RouteTableIds", []):
                        how = f"gateway endpoint {e['VpcEndpointId']}"
                    elif e.get("VpcEndpointType") == "Interface" and e.get("PrivateDnsEnabled"):
                        how = f"interface endpoint {e['VpcEndpointId']}"
                if how is None and nat:
                    target = next(nat[k] for k in ("NatGatewayId", "TransitGatewayId", "NetworkInterfaceId",
                                                   "InstanceId") if nat.get(k))
                    how = f"NAT ({target})"
                found[service] = how
            paths[s["SubnetId"]] = found
    return paths


def reach_problems(paths: dict[str, dict[str, str | None]]) -> list[str]:
    return [f"subnet {subnet} has no way to {service} (no {service} endpoint on its route table or in its "
            "VPC, no NAT route; an internet gateway does not count, Lambda gets no public address): the "
            "detector would hang there until its timeout. Add a VPC endpoint or a NAT route."
            for subnet, found in paths.items() for service, how in found.items() if how is None]


# ------------------------------------------------------------------ self-test
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
    assert with_param(["A=1", f"{RESERVATION}=3", 'B="x y"'], RESERVATION, 0) == ["A=1", 'B="x y"', f"{RESERVATION}=0"]
    defaults = template_parameters()
    assert {RESERVATION, "DatabaseMode", "AlarmEmail", "MaxLagChunks"} <= set(defaults) and "NoChunkAlarmMinutes" not in defaults
    assert defaults["DetectorMemory"] == "512" and defaults["DatabaseMode"] == "create" and defaults["AlarmEmail"] == ""
    assert known_only(["DatabaseMode=create", "NoChunkAlarmMinutes=10"], defaults, quiet=True) == ["DatabaseMode=create"]
    # precedence: make variable > samconfig > deployed stack > template default
    over, dep = ["DetectorMemory=1024"], {"DetectorMemory": "2048"}
    assert effective("DetectorMemory", "4096", over, dep, defaults) == "4096"
    assert effective("DetectorMemory", "", over, dep, defaults) == "1024"
    assert effective("DetectorMemory", "", [], dep, defaults) == "2048"
    assert effective("DetectorMemory", "", [], {}, defaults) == "512"
    names = 0
    for name, bad in (("txpipe", False), ("a" * 55, False), ("a" * 56, True), ("prod_1", True), ("1prod", True)):
        assert (stack_name_problem(name) is not None) == bad, name
        names += 1
    mem = 0
    for limit, mb, bad in ((10, 3008, False), (10, 3009, True), (999, 10240, True), (1000, 10240, False), (10, 512, False)):
        assert (memory_problem(limit, mb) is not None) == bad, (limit, mb)
        mem += 1
    assert "3,008 MB" in memory_problem(10, 4096) and "Service Quotas" in memory_problem(10, 4096)
    modes = {None: "--disable-rollback", "REVIEW_IN_PROGRESS": "--disable-rollback", "CREATE_FAILED": "--disable-rollback",
             "CREATE_COMPLETE": "--no-disable-rollback", "UPDATE_ROLLBACK_COMPLETE": "--no-disable-rollback",
             "UPDATE_FAILED": "--no-disable-rollback"}
    for status, flag in modes.items():
        got, _, problem = failure_mode(status)
        assert got == flag and problem is None, (status, got, problem)
    for status in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED", "UPDATE_IN_PROGRESS", "UPDATE_ROLLBACK_FAILED"):
        assert failure_mode(status)[2], status
    assert "make teardown" in failure_mode("ROLLBACK_FAILED")[2]
    sid = "arn:aws:cloudformation:us-east-1:123456789012:stack/prod/1c2fa620-982a-11e3-aff7-50e2416294e0"
    assert database_problem("create", "txpipe-1c2fa620-982a-11e3-aff7-50e2416294e0", sid) is None
    assert database_problem("create", "prod-database-abcdefgh", sid) is not None
    assert database_problem("existing", "prod-database-abcdefgh", sid) is None
    assert alarm_email_warning("") and alarm_email_warning("ops@example.com") is None
    assert reach_problems({"subnet-1": {"s3": "NAT (nat-1)", "dynamodb": None, "secretsmanager": "interface endpoint vpce-1"}}) \
        and not reach_problems({"subnet-1": {s: "NAT (nat-1)" for s in SERVICES}})
    print(f"preflight self-test: {len(cases)} reservation cases, {names} stack names, {mem} memory cases, "
          f"{len(modes) + 5} stack states, database naming, alarm e-mail, parameter precedence", file=sys.stderr)


# ------------------------------------------------------------------ AWS
def stack_state(cf, stack: str):
    """(status, stack id, parameters, outputs) of the stack, or (None, None, {}, {})."""
    import botocore.exceptions

    try:
        s = cf.describe_stacks(StackName=stack)["Stacks"][0]
    except botocore.exceptions.ClientError as e:
        if "does not exist" in str(e):
            return None, None, {}, {}
        raise
    return (s["StackStatus"], s["StackId"], {p["ParameterKey"]: p.get("ParameterValue", "") for p in s.get("Parameters", [])},
            {o["OutputKey"]: o["OutputValue"] for o in s.get("Outputs", [])})


def stack_name_from(env_stack: str, samconfig_stack: str) -> str:
    return env_stack or samconfig_stack


def before(boto3) -> int:
    overrides, samconfig_stack = read_samconfig()
    defaults = template_parameters()
    overrides = known_only(overrides, defaults)
    stack = stack_name_from(os.environ.get("STACK", ""), samconfig_stack)
    if not stack:
        say("no stack name: run make deploy STACK=<name> the first time (it is then kept in samconfig.toml)")
        return 1
    problem = stack_name_problem(stack)
    if problem:
        say(problem)
        return 1
    lam, cf = boto3.client("lambda"), boto3.client("cloudformation")
    status, stack_id, deployed, _ = stack_state(cf, stack)
    flag, message, problem = failure_mode(status)
    if problem:
        say(f"stack {stack}: {problem}")
        return 1
    if message:
        say(f"stack {stack}: {message}")

    def value(name, env=""):
        return effective(name, os.environ.get(env, "") if env else "", overrides, deployed, defaults)

    mode = value("DatabaseMode")
    if status and mode == "create":
        try:
            db = cf.describe_stack_resource(StackName=stack, LogicalResourceId="Database")
            problem = database_problem(mode, db["StackResourceDetail"].get("PhysicalResourceId"), stack_id)
        except Exception:  # noqa: BLE001 - no Database resource yet: nothing to replace
            problem = None
        if problem:
            say(problem)
            return 1
    settings = lam.get_account_settings()["AccountLimit"]
    limit = int(settings["ConcurrentExecutions"])
    memory = int(value("DetectorMemory", "DETECTOR_MEMORY") or 0)
    problem = memory_problem(limit, memory)
    if problem and os.environ.get("SKIP_MEMORY_CHECK") != "1":
        say(problem)
        return 1
    current = 0
    if status:
        try:
            current = lam.get_function_concurrency(FunctionName=f"{stack}-detector").get(
                "ReservedConcurrentExecutions", 0) or 0
        except lam.exceptions.ResourceNotFoundException:
            current = 0
    requested = value(RESERVATION, "DETECTOR_CONCURRENCY")
    try:
        requested_n = int(requested or 0)
    except ValueError:
        say(f"{RESERVATION}={requested!r} is not a number")
        return 1
    granted, message = decide(limit, int(settings["UnreservedConcurrentExecutions"]), int(current), requested_n)
    say(message)
    subnets = [s for s in value("ExistingSubnetIds").split(",") if s.strip()]
    if mode == "existing" and subnets:
        ec2 = boto3.client("ec2")
        paths = subnet_paths(ec2, ec2.meta.region_name, subnets)
        for subnet, found in paths.items():
            say(f"subnet {subnet}: " + ", ".join(f"{k} via {v or 'NOTHING'}" for k, v in found.items()))
        problems = reach_problems(paths)
        if problems:
            for p in problems:
                say(p)
            return 1
    warning = alarm_email_warning(value("AlarmEmail"))
    if warning:
        say("WARNING: " + warning)
    overrides = with_param(overrides, RESERVATION, granted)
    if os.environ.get("DETECTOR_MEMORY"):
        overrides = with_param(overrides, "DetectorMemory", os.environ["DETECTOR_MEMORY"])
    print(flag)
    print(" ".join(overrides))
    return 0


def after(boto3, deploy_status: int) -> int:
    _, samconfig_stack = read_samconfig()
    stack = stack_name_from(os.environ.get("STACK", ""), samconfig_stack)
    if not stack:
        return deploy_status
    status, _, params, outputs = stack_state(boto3.client("cloudformation"), stack)
    if deploy_status != 0:
        if status == "CREATE_FAILED":
            say(f"stack {stack} is CREATE_FAILED and keeps what it made (rollback disabled). Fix the cause "
                "the events above name, then make deploy continues from there; or make teardown removes it all.")
        elif status:
            say(f"stack {stack} is {status}; the events above say why")
        return deploy_status
    topic = outputs.get("AlarmTopicArn")
    if not topic:
        say("WARNING: " + alarm_email_warning(""))
    else:
        sns = boto3.client("sns")
        for sub in sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]:
            pending = sub["SubscriptionArn"] == "PendingConfirmation" or sns.get_subscription_attributes(
                SubscriptionArn=sub["SubscriptionArn"])["Attributes"].get("PendingConfirmation") == "true"
            say(f"alarm e-mail {sub['Endpoint']}: " + (
                "NOT CONFIRMED - open the message from AWS Notifications and click Confirm subscription, "
                "or no alarm reaches you" if pending else "confirmed"))
        say(f"to see an alarm arrive: aws cloudwatch set-alarm-state --alarm-name {stack}-failure-queue "
            "--state-value ALARM --state-reason 'make deploy: notification test' (it returns to OK on its "
            "next evaluation, a minute later, and mails that too). No mail: docs/deploy.md, Alarms reach someone.")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    import boto3
    import botocore.exceptions

    try:
        if sys.argv[1:2] == ["--after"]:
            return after(boto3, int(sys.argv[2]))
        return before(boto3)
    except botocore.exceptions.NoCredentialsError:
        say("no AWS credentials (aws configure, AWS_PROFILE or AWS_ACCESS_KEY_ID)")
        return 1
    except botocore.exceptions.NoRegionError:
        say("no AWS region (AWS_REGION, or aws configure)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
