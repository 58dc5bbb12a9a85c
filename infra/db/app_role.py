#!/usr/bin/env python3
"""Renders infra/db/app-role.sql: the detector's database role, with a SCRAM-SHA-256
verifier in place of its password.

For DatabaseMode=existing (with DatabaseMode=create the stack's DbSetup custom resource
does the same): create the role's secret, then run the SQL as an admin, e.g.

    aws secretsmanager create-secret --name txpipe/db-app --secret-string \
      '{"username":"txpipe_app","password":"<40 random chars>","host":"<host>","port":5432,"dbname":"txpipe"}'
    .tools/sam/bin/python infra/db/app_role.py --secret-arn <arn> | psql "<admin connection string>"

and deploy with ExistingDbSecretArn=<arn>. make deploy-check runs this path against a
local Postgres. Standard library only, but for boto3 when reading a secret.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys

SQL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app-role.sql")


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The verifier PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render(role: str, password: str, database: str) -> str:
    with open(SQL, encoding="utf-8") as f:
        sql = f.read()
    for key, value in {
        "{{role_literal}}": literal(role),
        "{{role}}": ident(role),
        "{{verifier}}": literal(scram_verifier(password)),
        "{{database}}": ident(database),
    }.items():
        sql = sql.replace(key, value)
    if "{{" in sql:
        raise ValueError("app-role.sql has a placeholder this script does not know")
    return sql


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--secret-arn", help="read username, password (and dbname) from this Secrets Manager secret")
    p.add_argument("--role", help="role name (default: the secret's username, else txpipe_app)")
    p.add_argument("--database", help="database (default: the secret's dbname, else txpipe)")
    p.add_argument("--password-env", help="read the password from this environment variable instead")
    a = p.parse_args()
    secret = {}
    if a.secret_arn:
        import boto3

        secret = json.loads(boto3.client("secretsmanager").get_secret_value(SecretId=a.secret_arn)["SecretString"])
    password = os.environ.get(a.password_env, "") if a.password_env else secret.get("password", "")
    if not password:
        p.error("no password: give --secret-arn or --password-env")
    role = a.role or secret.get("username") or "txpipe_app"
    database = a.database or secret.get("dbname") or "txpipe"
    sys.stdout.write(render(role, password, database))
    return 0


if __name__ == "__main__":
    sys.exit(main())
