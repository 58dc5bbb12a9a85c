#!/usr/bin/env python3
"""make teardown: deletes a txpipe stack and what blocks its deletion, and waits until
it is gone. Works from any stack state, a failed first create included.

1. Stops new invocations: reserved concurrency 0 on the stack's functions (the
   chunker's ticks and the detector's S3 events are throttled; one in flight finishes).
2. Lifts deletion protection on the stack's DynamoDB table and RDS instance (directly:
   a stack that failed its first create cannot be updated).
3. Empties the stack's buckets, every version and delete marker (S3 refuses to delete a
   bucket that is not empty).
4. Deletes the stack and waits; if it fails because an invocation in flight wrote one
   more object, empties the buckets again and retries (three tries).
5. What the template keeps on purpose - the state table (DeletionPolicy Retain) and the
   database's final snapshot (DeletionPolicy Snapshot) - is listed with the commands to
   delete it, or deleted too with --purge (make teardown PURGE=1).

    STACK=<name> infra/teardown.py [--purge]     (STACK defaults to samconfig.toml's)

make deploy-check runs it against moto and checks that nothing the stack made is left.
"""

import os
import sys
import time

RETRIES = 3


def say(msg: str) -> None:
    print(f"teardown: {msg}", file=sys.stderr, flush=True)


def stack_resources(cf, stack: str) -> dict[str, list[dict]]:
    """The stack's resources by type."""
    by_type: dict[str, list[dict]] = {}
    for page in cf.get_paginator("list_stack_resources").paginate(StackName=stack):
        for r in page["StackResourceSummaries"]:
            if r.get("PhysicalResourceId") and r.get("ResourceStatus") != "DELETE_COMPLETE":
                by_type.setdefault(r["ResourceType"], []).append(r)
    return by_type


def ids(by_type, kind):
    return [r["PhysicalResourceId"] for r in by_type.get(kind, [])]


def empty_bucket(s3, bucket: str) -> int:
    """Deletes every object version and delete marker; returns how many."""
    deleted = 0
    try:
        pages = list(s3.get_paginator("list_object_versions").paginate(Bucket=bucket))
    except s3.exceptions.NoSuchBucket:
        return 0
    for page in pages:
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for i in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
            deleted += len(keys[i:i + 1000])
    return deleted


def stack_status(cf, stack_id: str) -> str:
    try:
        return cf.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"]
    except Exception as e:  # noqa: BLE001 - a deleted stack may no longer be described
        if "does not exist" in str(e):
            return "DELETE_COMPLETE"
        raise


def teardown(client, stack: str, purge: bool = False, poll: float = 10.0) -> list[str]:
    """Deletes `stack`; `client(service)` makes a boto3 client. Returns what is left
    on purpose (empty with purge)."""
    cf = client("cloudformation")
    described = cf.describe_stacks(StackName=stack)["Stacks"][0]
    stack_id = described["StackId"]
    say(f"stack {stack} ({described['StackStatus']})")
    by_type = stack_resources(cf, stack_id)
    lam = client("lambda")
    for fn in ids(by_type, "AWS::Lambda::Function"):
        lam.put_function_concurrency(FunctionName=fn, ReservedConcurrentExecutions=0)
        say(f"function {fn}: reserved concurrency 0 (no new invocations)")
    ddb = client("dynamodb")
    tables = ids(by_type, "AWS::DynamoDB::Table")
    for table in tables:
        ddb.update_table(TableName=table, DeletionProtectionEnabled=False)
        say(f"table {table}: deletion protection off")
    rds = client("rds")
    instances = ids(by_type, "AWS::RDS::DBInstance")
    for db in instances:
        try:
            rds.modify_db_instance(DBInstanceIdentifier=db, DeletionProtection=False, ApplyImmediately=True)
        except rds.exceptions.InvalidDBInstanceStateFault:
            # Still being created (a failed first create does not wait for it): wait.
            say(f"database {db}: waiting until it is available to lift its deletion protection")
            rds.get_waiter("db_instance_available").wait(DBInstanceIdentifier=db)
            rds.modify_db_instance(DBInstanceIdentifier=db, DeletionProtection=False, ApplyImmediately=True)
        say(f"database {db}: deletion protection off")
    s3 = client("s3")
    buckets = ids(by_type, "AWS::S3::Bucket")
    for attempt in range(1, RETRIES + 1):
        for bucket in buckets:
            say(f"bucket {bucket}: emptied ({empty_bucket(s3, bucket)} object versions and delete markers)")
        cf.delete_stack(StackName=stack_id)
        status = stack_status(cf, stack_id)
        while status.endswith("_IN_PROGRESS"):
            time.sleep(poll)
            status = stack_status(cf, stack_id)
        if status == "DELETE_COMPLETE":
            say(f"stack {stack} deleted")
            break
        say(f"stack {stack} is {status} (try {attempt} of {RETRIES})")
    else:
        raise SystemExit(f"teardown: stack {stack} could not be deleted; its events say why")
    kept = []
    for table in tables:
        if purge:
            ddb.delete_table(TableName=table)
            say(f"table {table}: deleted (--purge)")
        else:
            kept.append(f"DynamoDB table {table} (DeletionPolicy Retain): aws dynamodb delete-table --table-name {table}")
    for db in instances:
        snapshots = [s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(
            DBInstanceIdentifier=db, SnapshotType="manual")["DBSnapshots"]]
        for snap in snapshots:
            if purge:
                rds.delete_db_snapshot(DBSnapshotIdentifier=snap)
                say(f"final snapshot {snap}: deleted (--purge)")
            else:
                kept.append(f"RDS snapshot {snap} (the database's final snapshot): "
                            f"aws rds delete-db-snapshot --db-snapshot-identifier {snap}")
    for k in kept:
        say(f"kept: {k}")
    return kept


def main() -> int:
    args = sys.argv[1:]
    if args not in ([], ["--purge"]):
        print(__doc__, file=sys.stderr)
        return 2
    stack = os.environ.get("STACK", "")
    if not stack and os.path.exists("samconfig.toml"):
        import tomllib

        with open("samconfig.toml", "rb") as f:
            stack = tomllib.load(f).get("default", {}).get("deploy", {}).get("parameters", {}).get("stack_name", "")
    if not stack:
        say("no stack: make teardown STACK=<name>")
        return 1
    import boto3

    teardown(boto3.client, stack, purge=args == ["--purge"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
