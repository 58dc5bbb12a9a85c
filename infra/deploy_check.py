#!/usr/bin/env python3
"""make deploy-check: the SAM template, deployed, exercised and torn down without an AWS account.

1. Translates infra/template.yaml with samtranslator (as sam deploy would), computes its
   dependency graph (no cycle; what runs in the private subnets depends on their route
   table associations and endpoints), and creates two stacks in one moto account (moto
   server mode, so the Rust binaries reach what it made): DatabaseMode=create, with the
   parts moto cannot model replaced by stand-ins, and DatabaseMode=existing.
2. Runs the real Lambda binaries as Lambda runs them - under a stand-in for the Lambda
   Runtime API, with each function's environment and memory from moto's Lambda - against
   the resources the stacks created: the DbSetup custom resource (the db-setup binary,
   answering a stand-in ResponseURL as CloudFormation drives it), then the
   chunker and the detector, with input in the stack's bucket and a throwaway Postgres
   behind verify-full TLS, reached through a Secrets Manager secret of the application
   role (infra/db/app-role.sql); and the other stack's chunker.
3. Checks every AWS call each handler made against its role's IAM policy (moto records
   the calls; conditions such as dynamodb:LeadingKeys are evaluated here, as moto does
   not); puts the metrics the binaries printed (EMF) into moto's CloudWatch and checks
   that each stack's alarms and dashboard read only its own; evaluates the alarm key and
   topic policies for CloudWatch; runs infra/preflight.py and infra/teardown.py against
   moto, and checks that a teardown leaves nothing the stack made.

Fails loudly, with the cause, at the first problem. Needs TXPIPE_MOTO_CMD and
TXPIPE_PG_BIN (tests/ensure-tools.sh), the txpipe binary (test data) and the chunker's
and the detector's Lambda binaries (debug builds are fine).
"""

import ast
import base64
import contextlib
import copy
import io
import datetime
import http.server
import json
import queue
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from io import BytesIO

import logging

import boto3
from botocore.config import Config
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "infra", "db"))
sys.path.insert(0, os.path.join(ROOT, "infra"))
import app_role  # noqa: E402
import preflight  # noqa: E402
import teardown  # noqa: E402

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
STACK = "txpipe-check"
ROWS, CUSTOMERS = 30000, 500
APP_ROLE = "txpipe_app"
MASTER_USER = "txpipe"  # the template's MasterUsername
# SAM's managed policies by name, as the policy loader would find them in IAM.
MANAGED = {
    name: f"arn:aws:iam::aws:policy/service-role/{name}"
    for name in ("AWSLambdaBasicExecutionRole", "AWSLambdaVPCAccessExecutionRole")
}
START = time.monotonic()
logging.getLogger("samtranslator").setLevel(logging.ERROR)  # "unpublished metrics" chatter


class CheckFailed(Exception):
    pass


def step(msg):
    print(f"== [{time.monotonic() - START:5.1f}s] {msg}", flush=True)


PASSED = [0]


def ok(msg):
    PASSED[0] += 1
    print(f"   ok  {msg}", flush=True)


def note(msg):
    print(f"   --  {msg}", flush=True)


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)
    ok(msg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, probe, timeout=30.0):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            if probe():
                return
        except Exception as e:  # noqa: BLE001 - retried until the timeout
            last = e
        time.sleep(0.2)
    raise CheckFailed(f"{what} did not come up in {timeout:.0f} s ({last})")


# ------------------------------------------------------------------ services
class Moto:
    def __init__(self, workdir):
        cmd = os.environ.get("TXPIPE_MOTO_CMD")
        if not cmd:
            raise CheckFailed("TXPIPE_MOTO_CMD is not set: run through `make deploy-check` (tests/ensure-tools.sh)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.recording = os.path.join(workdir, "moto-recording.jsonl")
        self.log = open(os.path.join(workdir, "moto.log"), "w")
        env = dict(os.environ, MOTO_RECORDER_FILEPATH=self.recording)
        self.proc = subprocess.Popen(
            shlex.split(cmd) + ["-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
        )
        wait_for("moto", lambda: urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2).status == 200)
        # Lambda invocations (S3 notifications of new chunks) answer without Docker.
        self.post("/moto-api/config", {"lambda": {"use_docker": False}})

    def post(self, path, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        return urllib.request.urlopen(req, timeout=10).read()

    def client(self, service):
        return boto3.client(
            service, endpoint_url=self.url, region_name=REGION,
            aws_access_key_id="test", aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 2}),
        )

    def start_recording(self):
        self.post("/moto-api/recorder/reset-recording")
        self.post("/moto-api/recorder/start-recording")

    def stop_recording(self):
        self.post("/moto-api/recorder/stop-recording")
        text = urllib.request.urlopen(f"{self.url}/moto-api/recorder/download-recording", timeout=10).read()
        return [json.loads(line) for line in text.decode().splitlines() if line.strip()]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Postgres:
    """A throwaway cluster as the project's tests make it (initdb/pg_ctl, as nobody when
    root), but with TLS (a test CA) and password auth on TCP, like RDS with force_ssl."""

    def __init__(self, workdir):
        self.bin = os.environ.get("TXPIPE_PG_BIN")
        if not self.bin or not os.path.exists(os.path.join(self.bin, "initdb")):
            raise CheckFailed("TXPIPE_PG_BIN is not set to PostgreSQL's bin dir: run through `make deploy-check`")
        self.dir = os.path.join(workdir, "pg")
        os.makedirs(self.dir)
        self.port = free_port()
        self.as_nobody = os.geteuid() == 0
        data = os.path.join(self.dir, "data")
        self.ca_pem = make_tls(self.dir)
        if self.as_nobody:
            subprocess.run(["chown", "-R", "nobody:nogroup", self.dir], check=True)
        self.run("initdb", "-D", data, "-U", "postgres", "--auth-local=trust",
                 "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale")
        with open(os.path.join(data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
                    "hostssl all all ::1/128 scram-sha-256\n")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=localhost -c ssl=on "
                f"-c ssl_cert_file={self.dir}/server.crt -c ssl_key_file={self.dir}/server.key "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self.run("pg_ctl", "-D", data, "-o", opts, "-l", os.path.join(self.dir, "server.log"), "-w", "-t", "60", "start")
        self.running = True

    def run(self, program, *args, stdin=None):
        cmd = [os.path.join(self.bin, program), *args]
        if self.as_nobody:
            cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"] + cmd
        out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=self.dir)
        if out.returncode != 0:
            raise CheckFailed(f"{program} {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
        return out.stdout

    def psql(self, sql, db="txpipe", user="postgres"):
        """As the superuser (or `user`), over the Unix socket."""
        return self.run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.dir, "-p", str(self.port),
                        "-U", user, "-d", db, "-At", "-f", "-", stdin=sql)

    def stop(self):
        if getattr(self, "running", False):
            try:
                self.run("pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "immediate", "-w", "stop")
            except CheckFailed:
                pass


class LambdaRuntime:
    """A stand-in for the Lambda Runtime API (the endpoints a custom runtime such as
    lambda_runtime polls) and for CloudFormation's presigned ResponseURL, on one loopback
    port: runs a real bootstrap binary for one event at a time, as Lambda would."""

    def __init__(self, workdir):
        self.events = queue.Queue()
        self.results = queue.Queue()
        self.answers = queue.Queue()
        runtime = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def body(self):
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                if self.path != "/2018-06-01/runtime/invocation/next":
                    return self.reply(404)
                request_id, event, deadline_ms = runtime.events.get()  # blocks between events
                self.reply(200, json.dumps(event).encode(), [
                    ("Content-Type", "application/json"),
                    ("Lambda-Runtime-Aws-Request-Id", request_id),
                    ("Lambda-Runtime-Deadline-Ms", str(deadline_ms)),
                    ("Lambda-Runtime-Invoked-Function-Arn", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:deploy-check"),
                    ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000"),
                ])

            def do_POST(self):
                body = self.body()
                m = re.match(r"^/2018-06-01/runtime/(?:invocation/([^/]+)/(response|error)|init/(error))$", self.path)
                if not m:
                    return self.reply(404)
                kind = m.group(2) or "init-error"
                runtime.results.put((kind, body.decode(errors="replace")))
                self.reply(202, b'{"status":"OK"}', [("Content-Type", "application/json")])

            def do_PUT(self):
                body = self.body()
                if not self.path.startswith("/cloudformation-response/"):
                    return self.reply(404)
                runtime.answers.put((self.path, dict(self.headers.items()), body.decode()))
                self.reply(200)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.workdir = workdir
        self.proc = None

    def start(self, binary, env, name, memory=256, log_name=None):
        env = dict(env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{self.port}", AWS_LAMBDA_FUNCTION_NAME=name,
                   AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(memory), AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
                   AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{name}", AWS_LAMBDA_LOG_STREAM_NAME="deploy-check")
        self.log = os.path.join(self.workdir, f"{log_name or name}.log")
        self.proc = subprocess.Popen([binary], env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)

    def invoke(self, event, timeout=120):
        """Runs one event; returns (the handler's result or error, the ResponseURL PUTs)."""
        request_id = f"req-{time.monotonic_ns()}"
        self.events.put((request_id, event, int(time.time() * 1000) + timeout * 1000))
        try:
            kind, body = self.results.get(timeout=timeout)
        except queue.Empty:
            raise CheckFailed(f"the handler did not finish in {timeout} s; log: {self.tail()}") from None
        puts = []
        while not self.answers.empty():
            puts.append(self.answers.get())
        return kind, body, puts

    def tail(self):
        with open(self.log) as f:
            return "".join(f.readlines()[-20:])

    def response_url(self, name):
        # Query string like a presigned S3 URL's (the handler must keep it, and never log it).
        return f"http://127.0.0.1:{self.port}/cloudformation-response/{name}?X-Amz-Signature=deploy-check-signature"

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.server.shutdown()


def make_tls(d):
    """A test CA and a server certificate for localhost; returns the CA's PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "txpipe deploy-check CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    with open(os.path.join(d, "server.crt"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    path = os.path.join(d, "server.key")
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return ca.public_bytes(serialization.Encoding.PEM).decode()


# ------------------------------------------------------------------ template
def load_template():
    with open(os.path.join(ROOT, "infra", "template.yaml")) as f:
        return yaml_parse(f.read())


def translate(params):
    """samtranslator, as `sam deploy` runs it; the code comes from a stand-in zip."""
    tpl = load_template()
    tpl["Globals"]["Function"]["CodeUri"] = "s3://txpipe-check-artifacts/bootstrap.zip"

    class Policies:
        def load(self):
            return MANAGED

    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    return transform(tpl, params, Policies())


def param_values(tpl, params):
    values = {k: v.get("Default") for k, v in tpl.get("Parameters", {}).items()}
    values.update(params)
    for k, v in tpl.get("Parameters", {}).items():
        if v.get("Type") == "CommaDelimitedList":
            values[k] = [] if values[k] in ("", None) else str(values[k]).split(",")
    return values


def evaluate(expr, values, conditions, cache):
    """The condition functions the template uses (Equals, Not, And, Or, Condition, Ref, Join, Split)."""
    if isinstance(expr, dict):
        (fn, arg), = expr.items()
        ev = lambda e: evaluate(e, values, conditions, cache)  # noqa: E731
        if fn == "Fn::Equals":
            a, b = ev(arg[0]), ev(arg[1])
            return str(a) == str(b)
        if fn == "Fn::Not":
            return not ev(arg[0])
        if fn == "Fn::And":
            return all(ev(a) for a in arg)
        if fn == "Fn::Or":
            return any(ev(a) for a in arg)
        if fn == "Condition":
            return condition(arg, values, conditions, cache)
        if fn == "Ref":
            if arg not in values:
                raise CheckFailed(f"condition refers to {arg}, not a parameter")
            return values[arg]
        if fn == "Fn::Join":
            parts = ev(arg[1])
            return arg[0].join(str(p) for p in (parts if isinstance(parts, list) else [parts]))
        raise CheckFailed(f"deploy-check cannot evaluate {fn} in a condition")
    if isinstance(expr, list):
        return [evaluate(e, values, conditions, cache) for e in expr]
    return expr


def condition(name, values, conditions, cache):
    if name not in cache:
        cache[name] = bool(evaluate(conditions[name], values, conditions, cache))
    return cache[name]


def resolve(node, cfn, params):
    """Fn::If and Ref of parameters resolved; AWS::NoValue becomes None."""
    values = param_values(cfn, params)
    conditions, cache = cfn.get("Conditions", {}), {}
    if isinstance(node, dict) and "Fn::If" in node:
        name, yes, no = node["Fn::If"]
        return resolve(yes if condition(name, values, conditions, cache) else no, cfn, params)
    if isinstance(node, dict) and "Ref" in node:
        return None if node["Ref"] == "AWS::NoValue" else str(values[node["Ref"]])
    return node


def expected_resources(cfn, params):
    values = param_values(cfn, params)
    conditions, cache = cfn.get("Conditions", {}), {}
    return {
        lid: r["Type"]
        for lid, r in cfn["Resources"].items()
        if "Condition" not in r or condition(r["Condition"], values, conditions, cache)
    }


def replace_getatt(node, target, attr, replacement):
    if isinstance(node, dict):
        if node.get("Fn::GetAtt") in ([target, attr], f"{target}.{attr}"):
            return copy.deepcopy(replacement)
        return {k: replace_getatt(v, target, attr, replacement) for k, v in node.items()}
    if isinstance(node, list):
        return [replace_getatt(v, target, attr, replacement) for v in node]
    return node


def replace_ref(node, target, replacement):
    if isinstance(node, dict):
        if node.get("Ref") == target:
            return copy.deepcopy(replacement)
        if "Fn::Sub" in node and isinstance(node["Fn::Sub"], str) and "${" + target + "}" in node["Fn::Sub"]:
            return {"Fn::Sub": node["Fn::Sub"].replace("${" + target + "}", replacement)}
        return {k: replace_ref(v, target, replacement) for k, v in node.items()}
    if isinstance(node, list):
        return [replace_ref(v, target, replacement) for v in node]
    return node


def sub_dotted_attrs(node):
    """moto splits ${Res.Attr.Sub} in Fn::Sub at every dot (so Endpoint.Address fails);
    the same Sub, written with a variable map, is what it can read."""
    if isinstance(node, dict):
        if isinstance(node.get("Fn::Sub"), str) and re.search(r"\$\{\w+\.\w+\.\w+\}", node["Fn::Sub"]):
            text, mapping = node["Fn::Sub"], {}
            for i, ref in enumerate(sorted(set(re.findall(r"\$\{(\w+\.\w+\.\w+)\}", text)))):
                res, att = ref.split(".", 1)
                mapping[f"DottedAttr{i}"] = {"Fn::GetAtt": [res, att]}
                text = text.replace("${" + ref + "}", "${" + f"DottedAttr{i}" + "}")
            return {"Fn::Sub": [text, mapping]}
        return {k: sub_dotted_attrs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [sub_dotted_attrs(v) for v in node]
    return node


def create_stack(moto, name, cfn, params):
    cf = moto.client("cloudformation")
    try:
        cf.create_stack(
            StackName=name, TemplateBody=json.dumps(cfn), Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in params.items()],
        )
    except Exception as e:  # noqa: BLE001
        raise CheckFailed(f"moto's CloudFormation refused stack {name}: {e}") from e
    deadline = time.monotonic() + 60
    while True:
        stack = cf.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    if stack["StackStatus"] != "CREATE_COMPLETE":
        events = cf.describe_stack_events(StackName=name)["StackEvents"]
        why = "\n".join(f"  {e['LogicalResourceId']}: {e['ResourceStatus']} {e.get('ResourceStatusReason', '')}"
                        for e in events if "FAILED" in e["ResourceStatus"])
        raise CheckFailed(f"stack {name} ended {stack['StackStatus']}: {stack.get('StackStatusReason')}\n{why}")
    summaries = cf.list_stack_resources(StackName=name)["StackResourceSummaries"]
    resources = {s["LogicalResourceId"]: s for s in summaries}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return resources, outputs


def report_types(expected, resources, standins=()):
    made = sorted({t for lid, t in expected.items() if lid in resources})
    not_modelled = sorted({t for lid, t in expected.items() if lid not in resources})
    ok(f"CREATE_COMPLETE: {len([l for l in expected if l in resources])} of {len(expected)} resources made by moto, "
       f"types: {', '.join(t.split('::', 1)[1] for t in made)}")
    if not_modelled:
        note("accepted by moto but not modelled (checked statically below): "
             + ", ".join(t.split("::", 1)[1] for t in not_modelled))
    for s in standins:
        note(f"stand-in: {s}")
    return not_modelled


# ------------------------------------------------------------------ IAM
def wildcard(pattern, value, case=True):
    rx = "^" + re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".") + "$"
    return re.match(rx, value, 0 if case else re.IGNORECASE) is not None


def as_list(x):
    return x if isinstance(x, list) else [x]


def condition_holds(op, key, expected, context):
    """IAM condition operators this template uses; anything else fails the check."""
    qualifier, _, base = op.rpartition(":")
    actual = context.get(key)
    expected = as_list(expected)
    if base in ("StringLike", "ArnLike"):
        match = lambda v: any(wildcard(e, v) for e in expected)  # noqa: E731
    elif base in ("StringEquals", "ArnEquals"):
        match = lambda v: v in expected  # noqa: E731
    elif base == "Bool":
        match = lambda v: str(v).lower() in [str(e).lower() for e in expected]  # noqa: E731
    else:
        raise CheckFailed(f"deploy-check's IAM evaluator does not know the operator {op}")
    if qualifier == "ForAllValues":
        return all(match(v) for v in as_list(actual or []))  # true for no values, as in IAM
    if qualifier == "ForAnyValue":
        return any(match(v) for v in as_list(actual or []))
    if actual is None:
        return False
    return any(match(v) for v in as_list(actual))


def decide(statements, action, resource, context):
    allowed = False
    for st in statements:
        if "NotAction" in st or "NotResource" in st:
            raise CheckFailed("deploy-check's IAM evaluator does not handle NotAction/NotResource")
        if not any(wildcard(a, action, case=False) for a in as_list(st["Action"])):
            continue
        if not any(wildcard(r, resource) for r in as_list(st.get("Resource", "*"))):
            continue
        if not all(condition_holds(op, key, exp, context)
                   for op, kv in st.get("Condition", {}).items() for key, exp in kv.items()):
            continue
        if st["Effect"] == "Deny":
            return False
        allowed = True
    return allowed


def role_statements(moto, function):
    lam, iam = moto.client("lambda"), moto.client("iam")
    role = lam.get_function_configuration(FunctionName=function)["Role"].rsplit("/", 1)[1]
    statements = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        if isinstance(doc, str):
            text = urllib.parse.unquote(doc)
            try:
                doc = json.loads(text)
            except json.JSONDecodeError:
                doc = ast.literal_eval(text)  # moto keeps CloudFormation's inline policies as a Python repr
        # moto keeps an Fn::If's AWS::NoValue in a list as null; CloudFormation drops it.
        statements += [st for st in as_list(doc["Statement"]) if st is not None]
    return statements


def attr(value):
    """A DynamoDB attribute value as a string (the key attributes are S or N)."""
    return next(iter(value.values())) if isinstance(value, dict) else value


def requests_to_actions(entries, table_pk="pk"):
    """(action, resource ARN, context) for each recorded AWS request."""
    out = []
    for e in entries:
        headers = {k.lower(): v for k, v in e["headers"].items()}
        auth = headers.get("authorization", "")
        m = re.search(r"Credential=[^/]+/\d+/([^/]+)/([^/]+)/", auth)
        if not m:
            continue  # unsigned: moto-api and the like
        service = m.group(2)
        body = e.get("body") or ""
        if e.get("body_encoded"):
            body = base64.b64decode(body)
        url = urllib.parse.urlsplit(e["url"])
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        method = e["method"]
        if service == "s3":
            out += s3_actions(method, url.path, query, headers, body)
        elif service == "dynamodb":
            op = headers["x-amz-target"].split(".", 1)[1]
            out += dynamodb_actions(op, json.loads(body or "{}"), table_pk)
        elif service == "secretsmanager":
            op = headers["x-amz-target"].split(".", 1)[1]
            req = json.loads(body or "{}")
            out.append((f"secretsmanager:{op}", req.get("SecretId", "*"), {}))
        elif service == "lambda":
            m2 = re.match(r"^/2015-03-31/functions/([^/]+)/invocations$", urllib.parse.unquote(url.path))
            if not m2:
                raise CheckFailed(f"deploy-check does not know the Lambda request {method} {url.path}")
            name = m2.group(1)
            arn = name if name.startswith("arn:") else f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
            out.append(("lambda:InvokeFunction", arn, {}))
        elif service == "sts":
            continue  # GetCallerIdentity needs no permission
        else:
            raise CheckFailed(f"a handler called {service} ({method} {url.path}); deploy-check does not know it")
    return out


def s3_actions(method, path, query, headers, body):
    parts = urllib.parse.unquote(path).lstrip("/").split("/", 1)
    bucket, key = parts[0], (parts[1] if len(parts) > 1 else "")
    obj = f"arn:aws:s3:::{bucket}/{key}"
    bkt = f"arn:aws:s3:::{bucket}"
    if not key:
        if method == "POST" and "delete" in query:
            keys = re.findall(rb"<Key>(.*?)</Key>", body if isinstance(body, bytes) else body.encode())
            return [("s3:DeleteObject", f"{bkt}/{k.decode()}", {}) for k in keys]
        if method in ("GET", "HEAD") and not (set(query) - {"list-type", "prefix", "delimiter", "max-keys",
                                                            "continuation-token", "start-after", "encoding-type",
                                                            "fetch-owner"}):
            return [("s3:ListBucket", bkt, {})]
        if method == "GET" and "location" in query:
            return [("s3:GetBucketLocation", bkt, {})]
        raise CheckFailed(f"deploy-check does not know the S3 bucket request {method} {path}?{query}")
    if method in ("GET", "HEAD"):
        return [("s3:GetObject", obj, {})]
    if method in ("PUT", "POST"):
        acts = [("s3:PutObject", obj, {})]
        if "x-amz-copy-source" in headers:
            src = urllib.parse.unquote(headers["x-amz-copy-source"]).lstrip("/").split("?")[0]
            acts.append(("s3:GetObject", f"arn:aws:s3:::{src}", {}))
        return acts
    if method == "DELETE":
        return [("s3:AbortMultipartUpload" if "uploadId" in query else "s3:DeleteObject", obj, {})]
    raise CheckFailed(f"deploy-check does not know the S3 request {method} {path}")


def dynamodb_actions(op, req, pk):
    table = lambda name: f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"  # noqa: E731
    keys = lambda item: {"dynamodb:LeadingKeys": [attr(item[pk])]} if item and pk in item else {}  # noqa: E731
    if op in ("GetItem", "DeleteItem", "UpdateItem"):
        return [(f"dynamodb:{op}", table(req["TableName"]), keys(req["Key"]))]
    if op == "PutItem":
        return [("dynamodb:PutItem", table(req["TableName"]), keys(req["Item"]))]
    if op == "Query":
        names = req.get("ExpressionAttributeNames", {})
        values = req.get("ExpressionAttributeValues", {})
        lead = []
        for name, placeholder in re.findall(r"([#\w]+)\s*=\s*(:\w+)", req.get("KeyConditionExpression", "")):
            if names.get(name, name) == pk:
                lead.append(attr(values[placeholder]))
        return [("dynamodb:Query", table(req["TableName"]), {"dynamodb:LeadingKeys": lead})]
    if op == "TransactWriteItems":
        acts = []
        for item in req["TransactItems"]:
            (kind, body), = item.items()
            action = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                      "ConditionCheck": "ConditionCheckItem"}[kind]
            acts.append((f"dynamodb:{action}", table(body["TableName"]), keys(body.get("Item") or body.get("Key"))))
        return acts
    if op == "TransactGetItems":
        return [("dynamodb:GetItem", table(i["Get"]["TableName"]), keys(i["Get"]["Key"])) for i in req["TransactItems"]]
    if op in ("BatchWriteItem", "BatchGetItem"):
        acts = []
        for name, reqs in req["RequestItems"].items():
            items = reqs["Keys"] if op == "BatchGetItem" else [
                (r.get("PutRequest", {}).get("Item") or r.get("DeleteRequest", {}).get("Key")) for r in reqs]
            lead = [attr(i[pk]) for i in items if i and pk in i]
            acts.append((f"dynamodb:{op}", table(name), {"dynamodb:LeadingKeys": lead}))
        return acts
    return [(f"dynamodb:{op}", table(req.get("TableName", "*")), {})]


def check_calls(moto, label, function, entries, table):
    statements = role_statements(moto, function)
    calls = requests_to_actions(entries)
    if not calls:
        raise CheckFailed(f"no AWS calls were recorded for the {label}: the recording is broken")
    denied, seen = [], {}
    for action, resource, ctx in calls:
        allowed = decide(statements, action, resource, ctx)
        shape = re.sub(r"/\d{8}\.(csv|jsonl)$", r"/<n>.\1", resource.replace(table, "<table>"))
        lead = ",".join(sorted({re.sub(r"#.*", "#…", k) for k in ctx.get("dynamodb:LeadingKeys", [])}))
        seen.setdefault((action, shape, lead), 0)
        seen[(action, shape, lead)] += 1
        if not allowed:
            denied.append(f"{action} {resource} {ctx}")
    for (action, shape, lead), n in sorted(seen.items()):
        print(f"         {n:4d} × {action} {shape}{' [' + lead + ']' if lead else ''}")
    if denied:
        raise CheckFailed(f"the {label}'s role does not allow {len(denied)} call(s) it made:\n  "
                          + "\n  ".join(sorted(set(denied))[:20]))
    ok(f"{label}: all {len(calls)} AWS calls allowed by its role's policy (actions, resources, LeadingKeys)")


# ------------------------------------------------------------------ static checks
def emitted_metrics():
    """The metric names each service emits, read from its sources: every
    `("Name", value, Unit::...)` under shared/pipeline/src/<service>/, and the
    detector's `Detections<PatIdN>` per pattern id in shared/core/src/detection.rs."""
    found = {}
    for service in ("chunker", "detector"):
        names = set()
        folder = os.path.join(ROOT, "shared", "pipeline", "src", service)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".rs"):
                with open(os.path.join(folder, name)) as f:
                    text = f.read()
                names |= set(re.findall(r'"(\w+)",\s*[^,";]+,\s*Unit::', text))
                if 'format!("Detections{}", p.id())' in text:
                    names |= {f"Detections{pid}" for pid, _ in registered_patterns()}
        found[service] = names
    return found


def registered_patterns():
    """Each pattern `patterns::REGISTERED` lists (shared/core/src/patterns/mod.rs), read
    from its own file: its `PatId<n>` and its settings' variables."""
    folder = os.path.join(ROOT, "shared", "core", "src", "patterns")
    with open(os.path.join(folder, "mod.rs")) as f:
        listed = re.search(r"REGISTERED: &\[Registration\] =\s*&\[([^\]]*)\]", f.read())
    out = []
    for module in re.findall(r"(\w+)::REGISTRATION", listed.group(1) if listed else ""):
        with open(os.path.join(folder, f"{module}.rs")) as f:
            text = f.read()
        pid = re.search(r'pub const ID: PatternId = PatternId::new\(\s*\d+,\s*"(PatId\d+)"', text)
        out.append((pid.group(1) if pid else f"? ({module}.rs names no id)", re.findall(r'var: "(TXPIPE_\w+)"', text)))
    return out


def static_checks(cfn, params, label):
    r = cfn["Resources"]
    fn = {lid: x for lid, x in r.items() if x["Type"] == "AWS::Lambda::Function"}
    det = fn["DetectorFunction"]["Properties"]
    alarms = {lid: x["Properties"] for lid, x in r.items() if x["Type"] == "AWS::CloudWatch::Alarm"}
    by_metric = {(a.get("Namespace"), a.get("MetricName")): a for a in alarms.values() if a.get("MetricName")}
    # Which function a txpipe metric query selects: the FunctionName dimension names the
    # chunker's or the detector's own name (the two-stack check shows what it reads).
    role = {"ChunkerFunction": "chunker", "DetectorFunction": "detector"}
    selects = lambda m: role.get((m.get("Dimensions") or [{}])[0].get("Value", {}).get("Ref"))  # noqa: E731
    for m in ("Ticks", "LagChunks"):
        a = by_metric.get(("txpipe", m))
        check(a is not None and selects(a) == "chunker" and a["TreatMissingData"] == "breaching",
              f"{label}: alarm on the chunker's {m}, missing data breaching")
    check(("txpipe", "ChunksCreated") not in by_metric, f"{label}: no alarm on ChunksCreated (fired before the upload and after the end)")
    # Every txpipe metric an alarm or the dashboard reads is one the code emits: the
    # names are read from the services' sources (a metric name next to its Unit), so
    # removing an emit breaks this check.
    emitted = emitted_metrics()
    check(len(emitted["chunker"]) >= 9 and len(emitted["detector"]) >= 13,
          f"{label}: metric names found in the sources ({len(emitted['chunker'])} chunker, {len(emitted['detector'])} detector)")
    read = set()
    for a in alarms.values():
        for m in [a] + [x["MetricStat"]["Metric"] for x in a.get("Metrics", []) if "MetricStat" in x]:
            if m.get("Namespace") == "txpipe":
                read.add((selects(m), m["MetricName"]))
    sub = r["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    body = sub[0] if isinstance(sub, list) else sub
    read |= {(f.lower(), m) for m, f in re.findall(r'"txpipe", "(\w+)", "FunctionName", "\$\{(Chunker|Detector)\}"', body)}
    # Every registered pattern has its place in the stack: its detections metric on the
    # dashboard, each of its settings a parameter that reaches the detector and the
    # StatusEnvironment output (what `txpipe explain` rebuilds a stream with).
    patterns = registered_patterns()
    env = det["Environment"]["Variables"]
    status = json.dumps(cfn["Outputs"]["StatusEnvironment"]["Value"])
    missing = [f"{pid} metric" for pid, _ in patterns if ("detector", f"Detections{pid}") not in read]
    for pid, variables in patterns:
        missing += [f"{pid} {v}" for v in variables
                    if not (isinstance(env.get(v), dict) and "Ref" in env[v] and env[v]["Ref"] in cfn["Parameters"])
                    or f"{v}=" not in status]
    # PATTERN_VARS (below) gives each setting a non-default value for the deploys here.
    unlisted = sorted({v for _, vs in patterns for v in vs} ^ set(PATTERN_VARS))
    missing += [f"{v} in deploy_check.PATTERN_VARS" for v in unlisted]
    check(len(patterns) >= 3 and not missing,
          f"{label}: each of the {len(patterns)} registered patterns has its dashboard metric and its settings as parameters "
          f"reaching the detector and StatusEnvironment" + (f" (missing: {missing})" if missing else ""))
    unknown = sorted(f"{f}/{m}" for f, m in read if m not in emitted.get(f, set()))
    check(not unknown and len(read) >= 15, f"{label}: the {len(read)} txpipe metrics alarms and dashboard read are all emitted"
                                          + (f" (unknown: {unknown})" if unknown else ""))
    for m, dim in (("ParkedChunks", "Function"), ("Throttles", "FunctionName"), ("AsyncEventAge", "FunctionName"),
                   ("StateMemoryPercent", "Function"), ("MissingChunks", "Function")):
        check(any(a.get("MetricName") == m for a in alarms.values()), f"{label}: an alarm on {m}")
    check(sum(a.get("MetricName") == "Throttles" for a in alarms.values()) == 2, f"{label}: throttle alarms for both functions")
    stalled = [a for a in alarms.values() if "Metrics" in a and "applied" in json.dumps(a["Metrics"])]
    check(len(stalled) == 1 and "lag > 0" in json.dumps(stalled[0]["Metrics"]),
          f"{label}: a stalled alarm (lag > 0 and nothing applied)")
    if params.get("AlarmEmail"):
        check(all(a.get("AlarmActions") == {"Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]}
                  for a in alarms.values()), f"{label}: every alarm notifies the topic")
    perm = r["DetectorS3Permission"]["Properties"]
    check("SourceArn" in perm and "SourceAccount" in perm, f"{label}: S3 may invoke the detector for this bucket and account only")
    bucket = r["PipelineBucket"]["Properties"]
    notif = bucket["NotificationConfiguration"]["LambdaConfigurations"][0]
    check(notif["Function"] == {"Fn::GetAtt": ["DetectorFunction", "Arn"]}, f"{label}: new chunks/*.csv invoke the detector")
    rules = {x["Id"]: x for x in bucket["LifecycleConfiguration"]["Rules"]}
    history = rules["chunks-history"]
    check(resolve(history.get("ExpirationInDays"), cfn, params) is None
          and resolve(history["Transitions"], cfn, params)[0]["StorageClass"] == "STANDARD_IA",
          f"{label}: chunks kept by default (ChunkRetentionDays=0), Standard-IA after 30 days")
    table = r["StateTable"]["Properties"]
    check("TimeToLiveSpecification" not in table, f"{label}: no TTL on the state table (nothing recovery needs expires)")
    # The design as built: the chunker wakes a stalled detector by writing its next chunk
    # again (no Lambda invoke, no chunk reads); the detector's state is in S3 (no delta# items).
    chunker_env = fn["ChunkerFunction"]["Properties"]["Environment"]["Variables"]
    detector_env = det["Environment"]["Variables"]
    check("TXPIPE_DETECTOR_FUNCTION" not in chunker_env and "TXPIPE_DETECTOR_STALL_SECS" in chunker_env,
          f"{label}: chunker env has TXPIPE_DETECTOR_STALL_SECS, no TXPIPE_DETECTOR_FUNCTION")
    check({"TXPIPE_SNAPSHOT_MAX_DELTAS", "TXPIPE_PARK_AFTER_ATTEMPTS", "TXPIPE_PG_STATEMENT_TIMEOUT_MS"} <= set(detector_env)
          and "TXPIPE_SNAPSHOT_EVERY" not in detector_env,
          f"{label}: detector env has TXPIPE_SNAPSHOT_MAX_DELTAS, TXPIPE_PARK_AFTER_ATTEMPTS, TXPIPE_PG_STATEMENT_TIMEOUT_MS")
    policies = json.dumps({lid: x["Properties"].get("Policies") for lid, x in r.items() if x["Type"] == "AWS::IAM::Role"})
    check("lambda:InvokeFunction" not in policies and "delta#" not in policies,
          f"{label}: no role may invoke a function or touch delta# items")
    det_cols = [c["Name"] for c in r["DetectionsTable"]["Properties"]["TableInput"]["StorageDescriptor"]["Columns"]]
    check(det_cols == ["ystarttime", "detectiontime", "patternid", "actiontype", "customername", "merchantid"],
          f"{label}: Glue detections table has exactly the six detection fields")
    for t in ("ChunksTable", "DetectionsTable"):
        p = r[t]["Properties"]["TableInput"]["Parameters"]
        check(p.get("projection.enabled") == "true" and p.get("projection.stream.type") == "injected"
              and "${!stream}" in json.dumps(p["storage.location.template"]),  # Sub's escape for a literal ${stream}
              f"{label}: Glue table {r[t]['Properties']['TableInput']['Name']} projects the stream partition")
    serde = r["ChunksTable"]["Properties"]["TableInput"]["StorageDescriptor"]["SerdeInfo"]
    check(serde["Parameters"]["quoteChar"] == "'" and r["ChunksTable"]["Properties"]["TableInput"]["Parameters"]["skip.header.line.count"] == "1",
          f"{label}: chunks read with OpenCSVSerde, quoteChar ', header skipped")


# ------------------------------------------------------------------ handlers
# Pattern parameters the existing-mode stack sets (none the default), and their variables.
PATTERN_PARAMS = {"UpgradeMinMerchantTxns": 49999, "UpgradeTopBp": 101, "UpgradeBottomBp": 99,
                  "ChildMinTxns": 79, "ChildAvgBelowCents": 2301, "DeiMinFemale": 99}
PATTERN_VARS = {
    "TXPIPE_UPGRADE_MIN_MERCHANT_TXNS": ("UpgradeMinMerchantTxns", 49999), "TXPIPE_UPGRADE_TOP_BP": ("UpgradeTopBp", 101),
    "TXPIPE_UPGRADE_BOTTOM_BP": ("UpgradeBottomBp", 99), "TXPIPE_CHILD_MIN_TXNS": ("ChildMinTxns", 79),
    "TXPIPE_CHILD_AVG_BELOW_CENTS": ("ChildAvgBelowCents", 2301), "TXPIPE_DEI_MIN_FEMALE": ("DeiMinFemale", 99),
}


def handler_env(moto, function, overrides):
    cfg = moto.client("lambda").get_function_configuration(FunctionName=function)
    variables = {k: str(v) for k, v in cfg.get("Environment", {}).get("Variables", {}).items()}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TXPIPE_", "AWS_"))}
    env = dict(base, **variables)
    env.update({
        "AWS_ENDPOINT_URL": moto.url, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true",
    })
    env.update(overrides)
    return variables, env


def s3_event(bucket, key, size):
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
        "eventTime": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "eventName": "ObjectCreated:Put", "userIdentity": {"principalId": "AWS:deploy-check"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "deploy-check", "x-amz-id-2": "deploy-check"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "chunks",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "deploy-check"}, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key, "size": size, "eTag": "0" * 32, "sequencer": "0"}},
    }]}


def list_keys(s3, bucket, prefix):
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    return keys


# ------------------------------------------------------------------ a Lambda, as Lambda runs it
RUNS = [0]


def run_lambda(moto, binary, function, workdir, event, overrides=None, timeout=120):
    """Runs the function's real bootstrap binary for one event under the Runtime API
    stand-in, with its environment and memory from moto's Lambda (AWS_LAMBDA_FUNCTION_NAME
    = its name, as Lambda sets it). Returns (its answer, the EMF metric records it printed:
    what CloudWatch Logs would turn into metrics, the AWS calls it made: moto's recording)."""
    cfg = moto.client("lambda").get_function_configuration(FunctionName=function)
    _, env = handler_env(moto, function, overrides or {})
    RUNS[0] += 1
    runtime = LambdaRuntime(workdir)
    runtime.start(binary, env, function, memory=cfg.get("MemorySize", 128), log_name=f"{function}-{RUNS[0]}")
    moto.start_recording()
    try:
        kind, body, _ = runtime.invoke(event, timeout=timeout)
    finally:
        calls = moto.stop_recording()
        runtime.stop()
    if kind != "response":
        raise CheckFailed(f"{function}: the handler failed ({kind}): {body[:500]}\n{runtime.tail()}")
    with open(runtime.log) as f:
        records = emf_records(f, function)
    return json.loads(body), records, calls


def emf_records(lines, origin):
    """Metric records from Embedded Metric Format lines, as CloudWatch Logs extracts them:
    per directive, per dimension set, per metric. `origin` is the function that printed them."""
    out = []
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if not isinstance(doc, dict) or "_aws" not in doc:
            continue
        for d in doc["_aws"]["CloudWatchMetrics"]:
            for dims in d["Dimensions"]:
                for m in d["Metrics"]:
                    out.append({"origin": origin, "namespace": d["Namespace"], "name": m["Name"],
                                "unit": m.get("Unit", "None"), "value": float(doc[m["Name"]]),
                                "dimensions": [{"Name": k, "Value": str(doc[k])} for k in dims],
                                "timestamp": doc["_aws"]["Timestamp"] / 1000})
    return out


def publish(moto, records):
    cw = moto.client("cloudwatch")
    for r in records:
        cw.put_metric_data(Namespace=r["namespace"], MetricData=[{
            "MetricName": r["name"], "Dimensions": r["dimensions"], "Value": r["value"], "Unit": r["unit"],
            "Timestamp": datetime.datetime.fromtimestamp(r["timestamp"], datetime.timezone.utc)}])


# ------------------------------------------------------------------ a created stack
NO_VALUE = object()


class Stack:
    """A stack moto created, with what it is needed to resolve the template's intrinsic
    functions the way CloudFormation did (for what moto's CloudFormation skips)."""

    def __init__(self, moto, name, cfn, params, resources, outputs):
        self.moto, self.name, self.cfn, self.params = moto, name, cfn, params
        self.resources, self.outputs = resources, outputs
        self.physical = {lid: r["PhysicalResourceId"] for lid, r in resources.items()}
        self.id = moto.client("cloudformation").describe_stacks(StackName=name)["Stacks"][0]["StackId"]
        self.values = param_values(cfn, params)
        self.cache = {}
        self.records = []  # EMF records its functions printed
        self.made = set()  # what creating it added to the account (inventory)

    def of_type(self, kind):
        return {lid for lid, r in self.cfn["Resources"].items() if r["Type"] == kind and lid in self.physical}

    def functions(self):
        return {self.physical[lid] for lid in self.of_type("AWS::Lambda::Function")}

    def condition(self, name):
        return condition(name, self.values, self.cfn.get("Conditions", {}), self.cache)

    def pseudo(self, name):
        return {"AWS::StackName": self.name, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                "AWS::Partition": "aws", "AWS::StackId": self.id, "AWS::URLSuffix": "amazonaws.com"}[name]

    def ref(self, name):
        if name == "AWS::NoValue":
            return NO_VALUE
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.values:
            v = self.values[name]
            return v if isinstance(v, list) else str(v)
        if name in self.physical:
            return self.physical[name]
        raise CheckFailed(f"{self.name}: {name} was not made by moto; deploy-check cannot resolve a Ref to it")

    def getatt(self, lid, attr):
        kind = self.cfn["Resources"][lid]["Type"]
        phys = self.ref(lid)
        if kind == "AWS::Lambda::Function" and attr == "Arn":
            return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{phys}"
        if kind == "AWS::SQS::Queue" and attr in ("QueueName", "Arn"):
            name = phys.rsplit("/", 1)[1]
            return name if attr == "QueueName" else f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
        raise CheckFailed(f"deploy-check cannot resolve {lid}.{attr}")

    def resolve(self, node):
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return self.ref(arg)
            if fn == "Fn::If":
                return self.resolve(arg[1] if self.condition(arg[0]) else arg[2])
            if fn == "Fn::GetAtt":
                lid, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.getatt(lid, attr)
            if fn == "Fn::Join":
                return arg[0].join(str(x) for x in self.resolve(arg[1]))
            if fn == "Fn::Select":
                return self.resolve(arg[1])[int(self.resolve(arg[0]))]
            if fn == "Fn::Split":
                return str(self.resolve(arg[1])).split(arg[0])
            if fn == "Fn::Sub":
                text, mapping = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

                def var(m):
                    name = m.group(1)
                    if name.startswith("!"):
                        return "${" + name[1:] + "}"
                    if name in mapping:
                        return str(mapping[name])
                    if "." in name:
                        return str(self.getatt(*name.split(".", 1)))
                    return str(self.ref(name))
                return re.sub(r"\$\{([^}]+)\}", var, text)
        out = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def alarms(self):
        """The template's alarms, as CloudFormation would create them in this stack."""
        out = {}
        for lid, r in self.cfn["Resources"].items():
            if r["Type"] == "AWS::CloudWatch::Alarm" and ("Condition" not in r or self.condition(r["Condition"])):
                out[lid] = self.resolve(r["Properties"])
        return out


def inventory(moto):
    """What the account holds, by kind, in the services the stacks use (CloudWatch
    alarms aside: moto's CloudFormation does not make them)."""
    c = moto.client

    def pages(client, op, key, **kw):
        return [x for p in client.get_paginator(op).paginate(**kw) for x in p[key]]
    kms = c("kms")
    ec2 = c("ec2")
    vpcs = [v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if not v.get("IsDefault")]
    in_vpcs = [{"Name": "vpc-id", "Values": vpcs}]
    items = {("s3 bucket", b["Name"]) for b in c("s3").list_buckets()["Buckets"]}
    items |= {("dynamodb table", t) for t in pages(c("dynamodb"), "list_tables", "TableNames")}
    items |= {("lambda function", f["FunctionName"]) for f in pages(c("lambda"), "list_functions", "Functions")}
    items |= {("iam role", r["RoleName"]) for r in pages(c("iam"), "list_roles", "Roles")}
    items |= {("log group", g["logGroupName"]) for g in pages(c("logs"), "describe_log_groups", "logGroups")}
    items |= {("sqs queue", q) for q in c("sqs").list_queues().get("QueueUrls", [])}
    items |= {("sns topic", t["TopicArn"]) for t in c("sns").list_topics()["Topics"]}
    # Customer managed keys (moto deletes a stack's key at once; CloudFormation schedules
    # its deletion). AWS managed keys (alias/aws/rds, made by RDS's encryption) stay in an
    # account by design.
    aliases = kms.list_aliases()["Aliases"]
    managed = {a.get("TargetKeyId") for a in aliases if a["AliasName"].startswith("alias/aws/")}
    items |= {("kms key", k["KeyId"]) for k in kms.list_keys()["Keys"] if k["KeyId"] not in managed}
    items |= {("kms alias", a["AliasName"]) for a in aliases if not a["AliasName"].startswith("alias/aws/")}
    items |= {("events rule", r["Name"]) for r in c("events").list_rules()["Rules"]}
    items |= {("dashboard", d["DashboardName"]) for d in c("cloudwatch").list_dashboards()["DashboardEntries"]}
    items |= {("secret", s["ARN"]) for s in c("secretsmanager").list_secrets()["SecretList"] if not s.get("DeletedDate")}
    items |= {("vpc", v) for v in vpcs}
    if vpcs:
        items |= {("subnet", s["SubnetId"]) for s in ec2.describe_subnets(Filters=in_vpcs)["Subnets"]}
        items |= {("route table", t["RouteTableId"]) for t in ec2.describe_route_tables(Filters=in_vpcs)["RouteTables"]}
        items |= {("security group", g["GroupId"]) for g in ec2.describe_security_groups(Filters=in_vpcs)["SecurityGroups"]}
        items |= {("vpc endpoint", e["VpcEndpointId"]) for e in ec2.describe_vpc_endpoints(Filters=in_vpcs)["VpcEndpoints"]}
    rds = c("rds")
    items |= {("rds instance", d["DBInstanceIdentifier"]) for d in rds.describe_db_instances()["DBInstances"]}
    items |= {("rds subnet group", g["DBSubnetGroupName"]) for g in rds.describe_db_subnet_groups()["DBSubnetGroups"]}
    items |= {("rds parameter group", g["DBParameterGroupName"]) for g in rds.describe_db_parameter_groups()["DBParameterGroups"]
              if not g["DBParameterGroupName"].startswith("default.")}
    return items


def create_stack_counted(moto, name, cfn, params):
    """create_stack, and what it added to the account (for the teardown check)."""
    before = inventory(moto)
    resources, outputs = create_stack(moto, name, cfn, params)
    stack = Stack(moto, name, cfn, params, resources, outputs)
    stack.made = inventory(moto) - before
    return stack


# ------------------------------------------------------------------ dependency graph
def dependency_graph(cfn, params):
    """Each resource CloudFormation creates with these parameters -> the resources it
    depends on (DependsOn, Ref, Fn::GetAtt, Fn::Sub), branches of Fn::If not taken left out."""
    values = param_values(cfn, params)
    conds, cache = cfn.get("Conditions", {}), {}
    present = set(expected_resources(cfn, params))

    def refs(node):
        if isinstance(node, list):
            return set().union(*(refs(x) for x in node)) if node else set()
        if not isinstance(node, dict):
            return set()
        if "Fn::If" in node:
            name, yes, no = node["Fn::If"]
            return refs(yes if condition(name, values, conds, cache) else no)
        if "Ref" in node:
            return {node["Ref"]} & present
        if "Fn::GetAtt" in node:
            arg = node["Fn::GetAtt"]
            return {arg[0] if isinstance(arg, list) else arg.split(".", 1)[0]} & present
        if "Fn::Sub" in node:
            arg = node["Fn::Sub"]
            text, mapping = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            names = {n.split(".", 1)[0] for n in re.findall(r"\$\{([^!}][^}]*)\}", text)}
            return (names & present) | refs(mapping)
        return set().union(*(refs(v) for v in node.values())) if node else set()

    graph = {}
    for lid in present:
        r = cfn["Resources"][lid]
        graph[lid] = (refs(r.get("Properties", {})) | (set(as_list(r.get("DependsOn", []))) & present)) - {lid}
    return graph


def find_cycle(graph):
    """A dependency cycle as a list of resources, or None (depth-first search)."""
    colour = {n: 0 for n in graph}  # 0 unseen, 1 on the path, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        path, stack = [], [(start, iter(sorted(graph[start])))]
        colour[start] = 1
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def ancestors(graph, node):
    seen, todo = set(), [node]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def network_needs(cfn, params, graph):
    """What each resource that calls AWS from the stack's private subnets needs to exist
    while it runs: every function in the VPC, and every custom resource such a function
    backs (it answers CloudFormation through S3, also at delete time). Needs: the route
    table associations of its subnets (without them a subnet uses the VPC's main table,
    which has no endpoint routes) and the stack's endpoint for each of S3, DynamoDB and
    Secrets Manager its role calls. Returns {resource: (needs, missing)} and the services
    with no endpoint in the stack."""
    values = param_values(cfn, params)
    conds, cache = cfn.get("Conditions", {}), {}
    res = cfn["Resources"]

    def taken(node):  # Fn::If resolved to the branch taken
        if isinstance(node, dict) and "Fn::If" in node:
            name, yes, no = node["Fn::If"]
            return taken(yes if condition(name, values, conds, cache) else no)
        if isinstance(node, dict):
            return {k: taken(v) for k, v in node.items()}
        if isinstance(node, list):
            return [taken(x) for x in node if not (isinstance(x, dict) and x.get("Ref") == "AWS::NoValue")]
        return node

    endpoints = {}
    for lid in graph:
        if res[lid]["Type"] == "AWS::EC2::VPCEndpoint":
            name = res[lid]["Properties"]["ServiceName"]
            endpoints[lid] = (name["Fn::Sub"] if isinstance(name, dict) else name).rsplit(".", 1)[1]
    associations = {lid: res[lid]["Properties"]["SubnetId"].get("Ref") for lid in graph
                    if res[lid]["Type"] == "AWS::EC2::SubnetRouteTableAssociation"}
    backing = {}  # function -> the custom resources it backs
    for lid in graph:
        if res[lid]["Type"].startswith("Custom::") or res[lid]["Type"] == "AWS::CloudFormation::CustomResource":
            token = res[lid]["Properties"]["ServiceToken"].get("Fn::GetAtt")
            backing.setdefault(token[0] if isinstance(token, list) else token.split(".")[0], []).append(lid)
    out, no_endpoint = {}, set()
    for lid in sorted(graph):
        r = res[lid]
        if r["Type"] != "AWS::Lambda::Function":
            continue
        vpc = taken(r["Properties"].get("VpcConfig"))
        if not isinstance(vpc, dict):
            continue
        subnets = {s["Ref"] for s in as_list(vpc.get("SubnetIds", [])) if isinstance(s, dict) and "Ref" in s}
        if not subnets:
            continue  # subnets given as parameters: infra/preflight.py checks their routes
        role = taken(res[r["Properties"]["Role"]["Fn::GetAtt"][0]]["Properties"])
        actions = {a for p in role.get("Policies", []) for st in as_list(p["PolicyDocument"]["Statement"])
                   for a in as_list(st.get("Action", []))}
        services = {a.split(":", 1)[0] for a in actions} & set(preflight.SERVICES)
        if lid in backing:
            services.add("s3")  # the answer to CloudFormation: a PUT to a presigned S3 URL
        no_endpoint |= services - set(endpoints.values())
        needs = {a for a, subnet in associations.items() if subnet in subnets}
        needs |= {e for e, service in endpoints.items() if service in services}
        for who in [lid] + backing.get(lid, []):
            out[who] = (needs, needs - ancestors(graph, who))
    return out, no_endpoint


def check_dependencies(cfn, params, label):
    graph = dependency_graph(cfn, params)
    cycle = find_cycle(graph)
    edges = sum(len(v) for v in graph.values())
    check(cycle is None, f"{label}: no dependency cycle among the {len(graph)} resources ({edges} dependencies, "
                         "depth-first search of the translated template)" + (f": {' -> '.join(cycle)}" if cycle else ""))
    needs, no_endpoint = network_needs(cfn, params, graph)
    check(not no_endpoint, f"{label}: an endpoint in the stack for every service the VPC functions call"
                           + (f" (none for {sorted(no_endpoint)})" if no_endpoint else ""))
    missing = {who: sorted(m) for who, (_, m) in needs.items() if m}
    if not needs:
        note(f"{label}: no function in the stack's own subnets (none, or subnets given as parameters)")
        return graph
    check(not missing, f"{label}: {', '.join(sorted(needs))} depend on the route table associations and endpoints "
                       f"they reach AWS through ({sum(len(n) for n, _ in needs.values())} needs, found by graph "
                       "search), so CloudFormation creates those first and deletes them last"
                       + (f"; missing: {missing}" if missing else ""))
    # The search finds the gap it guards against: the template without the DependsOn and
    # the detector's network tag has the dependencies the issue found missing.
    broken = copy.deepcopy(cfn)
    broken["Resources"]["DbSetupFunction"].pop("DependsOn", None)
    broken["Resources"]["DetectorFunction"]["Properties"].pop("Tags", None)
    gaps, _ = network_needs(broken, params, dependency_graph(broken, params))
    found = {(who, dep) for who, (_, m) in gaps.items() for dep in m}
    check(("DbSetup", "PrivateSubnetARoutes") in found and ("DetectorFunction", "SecretsManagerEndpoint") in found,
          f"{label}: without DbSetupFunction's DependsOn and the detector's network tag the search reports "
          f"{len(found)} missing dependencies (e.g. DbSetup -> PrivateSubnetARoutes)")
    return graph


# ------------------------------------------------------------------ resource policies
def allowed_for_service(policy, service, action, resource, context):
    """A resource policy's decision for a request from an AWS service principal."""
    def names(st):
        p = st.get("Principal", {})
        if p == "*":
            return True
        return service in as_list(p.get("Service", []))
    return decide([st for st in as_list(policy["Statement"]) if names(st)], action, resource, context)


def check_alarm_delivery(moto, stack, other):
    """CloudWatch publishing this stack's alarms to its KMS-encrypted topic, as the key
    policy (read back from moto) and the topic policy decide it."""
    step(f"{stack.name}: can CloudWatch publish this stack's alarms to its encrypted topic? (key and topic policies evaluated)")
    topic = stack.outputs["AlarmTopicArn"]
    key = moto.client("sns").get_topic_attributes(TopicArn=topic)["Attributes"].get("KmsMasterKeyId", "")
    check(key and not key.startswith("alias/aws/"), f"the alarm topic is encrypted with the stack's own key {key[:8]}…, "
                                                     "not alias/aws/sns (whose policy CloudWatch cannot use)")
    key_arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key}"
    key_policy = moto.client("kms").get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    key_policy = json.loads(key_policy) if isinstance(key_policy, str) else key_policy
    topic_policy = stack.resolve(stack.cfn["Resources"]["AlarmTopicPolicy"]["Properties"]["PolicyDocument"])
    alarm = lambda s, what: f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{s}-{what}"  # noqa: E731
    own = {"aws:SourceArn": alarm(stack.name, "lag"), "aws:SourceAccount": ACCOUNT, "aws:SecureTransport": "true"}
    cases = [
        ("its own alarm", own, True),
        (f"an alarm of stack {other.name}", dict(own, **{"aws:SourceArn": alarm(other.name, "lag")}), False),
        ("an alarm in another account", dict(own, **{"aws:SourceAccount": "210987654321",
                                                      "aws:SourceArn": alarm(stack.name, "lag").replace(ACCOUNT, "210987654321")}), False),
    ]
    for what, ctx, want in cases:
        got = [allowed_for_service(key_policy, "cloudwatch.amazonaws.com", a, key_arn, ctx)
               for a in ("kms:GenerateDataKey", "kms:Decrypt")]
        got.append(allowed_for_service(topic_policy, "cloudwatch.amazonaws.com", "sns:Publish", topic, ctx))
        check(got == [want] * 3, f"cloudwatch.amazonaws.com for {what}: kms:GenerateDataKey, kms:Decrypt on the key and "
                                 f"sns:Publish to the topic {'allowed' if want else 'denied'} ({got})")
    plain = dict(own, **{"aws:SecureTransport": "false"})
    check(not allowed_for_service(topic_policy, "cloudwatch.amazonaws.com", "sns:Publish", topic, plain),
          "sns:Publish without TLS: denied")


# ------------------------------------------------------------------ two stacks, one account
def read(moto, stat_query, start, end):
    got = moto.client("cloudwatch").get_metric_data(
        MetricDataQueries=[dict(stat_query, Id="q", ReturnData=True)], StartTime=start, EndTime=end)
    return got["MetricDataResults"][0]["Values"]


def aggregate(stat, values):
    if not values:
        return None
    return {"Sum": sum, "Maximum": max, "Minimum": min, "SampleCount": sum}[stat](values)


def check_two_stacks(moto, stacks):
    """Two stacks in one account: each alarm and each dashboard widget reads the metrics
    of its own stack's functions, and no other."""
    step("two stacks in one account: each alarm and dashboard widget reads only its own stack's metrics")
    records = [r for s in stacks for r in s.records]
    publish(moto, records)
    ok(f"{len(records)} metric records the functions printed (EMF) put into moto's CloudWatch, as CloudWatch Logs would: "
       + ", ".join(f"{s.name} {len(s.records)}" for s in stacks))
    start = datetime.datetime.fromtimestamp(min(r["timestamp"] for r in records) - 3600, datetime.timezone.utc)
    end = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
    cw = moto.client("cloudwatch")
    for s in stacks:
        for props in s.alarms().values():
            args = {k: v for k, v in props.items() if k != "Metrics"}
            for k in ("Threshold",):
                args[k] = float(args[k])
            for k in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
                if k in args:
                    args[k] = int(args[k])
            if "Metrics" in props:
                args["Metrics"] = props["Metrics"]
            cw.put_metric_alarm(**args)
    own_resources = {s.name: set(s.physical.values()) | {q.rsplit("/", 1)[1] for q in s.physical.values() if "/" in q}
                     for s in stacks}
    summary = {}
    for s in stacks:
        alarms = [a for a in cw.describe_alarms(AlarmNamePrefix=f"{s.name}-")["MetricAlarms"]]
        # Named <stack>-…, as the key and topic policies require (see check_alarm_delivery).
        wrong, reads, nonempty = ([] if len(alarms) == len(s.alarms()) else
                                  [f"{len(s.alarms()) - len(alarms)} alarms not named {s.name}-…"]), 0, 0
        for a in alarms:
            queries = [{"MetricStat": {"Metric": {"Namespace": a["Namespace"], "MetricName": a["MetricName"],
                                                  "Dimensions": a["Dimensions"]},
                                       "Period": a["Period"], "Stat": a["Statistic"]}}] if a.get("MetricName") else \
                [{"MetricStat": m["MetricStat"]} for m in a.get("Metrics", []) if "MetricStat" in m]
            for q in queries:
                metric = q["MetricStat"]["Metric"]
                dims = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
                if not set(dims.values()) <= own_resources[s.name]:
                    wrong.append(f"{a['AlarmName']} selects {dims}, not a resource of its stack")
                    continue
                if metric["Namespace"] != "txpipe":
                    continue
                reads += 1
                fn, stat = dims.get("FunctionName"), q["MetricStat"]["Stat"]
                mine = [r["value"] for r in records if r["origin"] == fn and r["name"] == metric["MetricName"]]
                want, got = aggregate(stat, mine), aggregate(stat, read(moto, q, start, end))
                nonempty += want is not None
                if got != want:
                    wrong.append(f"{a['AlarmName']}: {metric['MetricName']} {stat} reads {got}, its function printed {want}")
                if a["AlarmName"] == f"{s.name}-chunker-heartbeat":
                    summary[s.name] = got
        check(not wrong and nonempty >= 3,
              f"{s.name}: its {len(alarms)} alarms select its own resources; their {reads} txpipe metric queries read "
              f"exactly what its own functions printed ({nonempty} with data)" + (": " + "; ".join(wrong) if wrong else ""))
        body = json.loads(cw.get_dashboard(DashboardName=s.name)["DashboardBody"])
        rows = [row for w in body["widgets"] for row in w["properties"].get("metrics", [])
                if row and row[0] == "txpipe"]
        bad = []
        for row in rows:
            name, dims = row[1], dict(zip(row[2:-1:2], row[3:-1:2])) if isinstance(row[-1], dict) else dict(zip(row[2::2], row[3::2]))
            fn = dims.get("FunctionName")
            q = {"MetricStat": {"Metric": {"Namespace": "txpipe", "MetricName": name,
                                           "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()]},
                                "Period": 60, "Stat": "SampleCount"}}
            mine = len([r for r in records if r["origin"] == fn and r["name"] == name])
            got = aggregate("SampleCount", read(moto, q, start, end)) or 0
            if fn not in s.functions() or got != mine:
                bad.append(f"{name} {dims}: reads {got} points, its function printed {mine}")
        check(rows and not bad, f"{s.name}: the dashboard's {len(rows)} txpipe metric rows (as moto's CloudFormation "
                                f"made it) each read only their own function's points" + (": " + "; ".join(bad) if bad else ""))
    a, b = stacks
    check(summary.get(a.name) and summary.get(b.name) and summary[a.name] != summary[b.name],
          f"heartbeat: {a.name} reads {summary.get(a.name):.0f} tick(s), {b.name} {summary.get(b.name):.0f}: neither "
          "hears the other's chunker (with a shared dimension both would read "
          f"{(summary.get(a.name) or 0) + (summary.get(b.name) or 0):.0f})")


# ------------------------------------------------------------------ preflight and teardown against moto
def check_preflight(moto, create, existing, workdir):
    step("infra/preflight.py (make deploy's first and last steps) against moto")
    ec2 = moto.client("ec2")
    private = [create.physical["PrivateSubnetA"], create.physical["PrivateSubnetB"]]
    # moto's CloudFormation records AWS::EC2::SubnetRouteTableAssociation but does not
    # apply it to the route table (DescribeRouteTables does not show it): applied here
    # through the EC2 API, as CloudFormation does, and undone before the teardown.
    applied = [ec2.associate_route_table(RouteTableId=create.physical["PrivateRouteTable"], SubnetId=s)["AssociationId"]
               for s in private]
    note("stand-in: the two subnet route table associations applied through the EC2 API (moto's CloudFormation "
         "records them without applying them)")
    paths = preflight.subnet_paths(ec2, REGION, private)
    check(not preflight.reach_problems(paths) and all(how and "endpoint" in how for p in paths.values() for how in p.values()),
          "the create-mode subnets reach S3, DynamoDB and Secrets Manager through the stack's endpoints (no NAT, "
          "no internet route): " + "; ".join(f"{k} via {v}" for k, v in paths[private[0]].items()))
    # A subnet of the same VPC without the association uses the main route table: the
    # Secrets Manager endpoint (private DNS) still answers, S3 and DynamoDB do not.
    bare = ec2.create_subnet(VpcId=create.physical["Vpc"], CidrBlock="10.42.9.0/24")["Subnet"]["SubnetId"]
    try:
        found = preflight.subnet_paths(ec2, REGION, [bare])[bare]
        check(found["s3"] is None and found["dynamodb"] is None and found["secretsmanager"],
              f"a subnet without the route table association: no way to S3 or DynamoDB, Secrets Manager via {found['secretsmanager']}")
        cwd = os.path.join(workdir, "preflight")
        os.makedirs(cwd, exist_ok=True)
        runs = []

        def run(*args, samconfig=None, limit=1000, **env):
            """preflight's before (or --after) in this process, against moto, in a directory
            with this samconfig.toml. moto has no Lambda GetAccountSettings: a stand-in
            answers with `limit` (1000 is the standard quota, 10 a new account's)."""
            path = os.path.join(cwd, "samconfig.toml")
            if os.path.exists(path):
                os.remove(path)
            if samconfig:
                with open(path, "w") as f:
                    f.write(f'version = 0.1\n[default.deploy.parameters]\nparameter_overrides = "{samconfig}"\n')

            class Boto3:
                @staticmethod
                def client(service):
                    c = moto.client(service)
                    if service == "lambda":
                        c.get_account_settings = lambda: {"AccountLimit": {
                            "ConcurrentExecutions": limit, "UnreservedConcurrentExecutions": limit}}
                    return c
            saved_env, saved_cwd = dict(os.environ), os.getcwd()
            out, err = io.StringIO(), io.StringIO()
            try:
                for k in ("STACK", "DETECTOR_CONCURRENCY", "DETECTOR_MEMORY", "SKIP_MEMORY_CHECK"):
                    os.environ.pop(k, None)
                os.environ.update(env)
                os.chdir(cwd)
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    rc = preflight.after(Boto3, int(args[1])) if args[:1] == ("--after",) else preflight.before(Boto3)
            finally:
                os.chdir(saved_cwd)
                os.environ.clear()
                os.environ.update(saved_env)
            runs.append(f"preflight {' '.join(args)} {env} -> {rc}\n{out.getvalue()}{err.getvalue()}")
            return rc, out.getvalue().splitlines() + ["", ""], err.getvalue()

        def said(cond, msg):  # a check, with what the preflight said when it fails
            check(cond, msg if cond else f"{msg}\n{runs[-1]}")
        rc, out, err = run(STACK=existing.name)
        said(rc == 0 and out[0] == "--no-disable-rollback" and "DetectorReservedConcurrency=0" in out[1],
             f"{existing.name} (exists): updates roll back as usual (--no-disable-rollback), unreserved")
        rc, out, err = run(STACK="txpipe-new")
        said(rc == 0 and out[0] == "--disable-rollback" and "first create" in err and "AlarmEmail is empty" in err,
             "a new stack: created with --disable-rollback (a failed first create keeps what it made), and a warning "
             "that AlarmEmail is empty")
        rc, out, err = run(STACK="s" * 56)
        said(rc == 1 and "at most 55" in err, "a 56-character stack name: stopped before anything is created")
        rc, out, err = run(STACK="txpipe-new", DETECTOR_MEMORY="4096", limit=10)
        said(rc == 1 and "3,008 MB" in err and "Service Quotas" in err,
             "DetectorMemory=4096 in an account with a new account's quotas (limit 10): stopped, saying what to ask AWS for")
        rc, out, err = run(STACK="txpipe-new", DETECTOR_MEMORY="4096", DETECTOR_CONCURRENCY="2", limit=1000)
        said(rc == 0 and "DetectorMemory=4096" in out[1] and "DetectorReservedConcurrency=2" in out[1],
             "the same with the standard quotas (limit 1000): DetectorMemory=4096 and a reservation of 2 deploy")
        rc, out, err = run(STACK="txpipe-new", DETECTOR_CONCURRENCY="2", limit=10)
        said(rc == 0 and "DetectorReservedConcurrency=0" in out[1] and "deploying the detector unreserved" in err,
             "a reservation of 2 at limit 10: deployed unreserved, and said so")
        sg = create.physical["DetectorSecurityGroup"]
        rc, out, err = run(STACK="txpipe-new", samconfig=f"DatabaseMode=existing ExistingSubnetIds={bare} ExistingSecurityGroupIds={sg}")
        said(rc == 1 and f"subnet {bare} has no way to s3" in err and "dynamodb" in err,
             "existing database in a subnet without a way to S3 and DynamoDB: stopped, naming the subnet and services")
        rc, out, err = run(STACK="txpipe-new", samconfig=f"DatabaseMode=existing ExistingSubnetIds={','.join(private)} "
                                                        f"ExistingSecurityGroupIds={sg}")
        said(rc == 0 and "s3 via gateway endpoint" in err, "existing database in the create-mode subnets: they pass")
        rc, out, err = run("--after", "0", STACK=existing.name)
        said(rc == 0 and "alarm e-mail ops@example.com: " in err and f"--alarm-name {existing.name}-failure-queue" in err,
             "after the deploy: the alarm e-mail's subscription state, and the set-alarm-state test to run")
    finally:
        ec2.delete_subnet(SubnetId=bare)
        for a in applied:
            ec2.disassociate_route_table(AssociationId=a)


def check_teardown(moto, stack, purge):
    step(f"make teardown{' PURGE=1' if purge else ''} of {stack.name} in moto (infra/teardown.py)")
    protected = moto.client("dynamodb").describe_table(
        TableName=stack.physical["StateTable"])["Table"].get("DeletionProtectionEnabled")
    # moto's CloudFormation models no delete for these two types (it skips them, and then
    # cannot delete the VPC): deleted here through the EC2 API, where CloudFormation
    # deletes them itself.
    ec2 = moto.client("ec2")
    endpoints = [stack.physical[lid] for lid in stack.of_type("AWS::EC2::VPCEndpoint")]
    tables = [stack.physical[lid] for lid in stack.of_type("AWS::EC2::RouteTable")]
    if endpoints:
        ec2.delete_vpc_endpoints(VpcEndpointIds=endpoints)
    for t in tables:
        ec2.delete_route_table(RouteTableId=t)
    if endpoints or tables:
        note(f"stand-in: {len(endpoints)} VPC endpoints and {len(tables)} route table deleted through the EC2 API "
             "(moto's CloudFormation has no delete for them)")
    kept = teardown.teardown(moto.client, stack.name, purge=purge, poll=0.2)
    left = stack.made & inventory(moto)
    want = set() if purge else {("dynamodb table", stack.physical["StateTable"])}
    check(left == want and len(kept) == len(want),
          f"{stack.name}: of the {len(stack.made)} things creating it added to the account, "
          + ("none is left" if purge else "only the state table is left (DeletionPolicy Retain), and named")
          + (f" (the table's deletion protection was {'on' if protected else 'off'} and lifted)" if purge else "")
          + (f"; left: {sorted(left - want)}" if left - want else "")
          + (f"; expected but gone: {sorted(want - left)}" if want - left else ""))


# ------------------------------------------------------------------ the check
def check_create_mode(moto, pg, db_setup_bin, workdir):
    step("DatabaseMode=create: translate, stand in for what moto lacks, create the stack")
    # DeletionProtection left at its default (true): the teardown below must lift it.
    params = {"DatabaseMode": "create", "BucketNamePrefix": "txpipe-create", "AlarmEmail": "ops@example.com"}
    cfn = translate(params)
    static_checks(cfn, params, "create")
    check_dependencies(cfn, params, "create")
    expected = expected_resources(cfn, params)
    db = cfn["Resources"]["Database"]["Properties"]
    check(db["MaxAllocatedStorage"] == {"Ref": "DbMaxAllocatedStorage"} and db["StorageEncrypted"] is True,
          "create: storage autoscaling up to DbMaxAllocatedStorage, encrypted")
    standins = []
    # moto's CloudFormation has no AWS::SecretsManager::Secret, and its RDS model no
    # MasterUserSecret: both secrets are made through the Secrets Manager API and their
    # ARNs put where the template refers to them.
    sm = moto.client("secretsmanager")
    gen = cfn["Resources"]["DatabaseAppSecret"]["Properties"]["GenerateSecretString"]
    check(json.loads(gen["SecretStringTemplate"]).get("username") == APP_ROLE and gen["GenerateStringKey"] == "password"
          and gen["PasswordLength"] >= 32, "create: the app secret is generated (txpipe_app, 40 chars)")
    password = sm.get_random_password(PasswordLength=gen["PasswordLength"], ExcludePunctuation=True)["RandomPassword"]
    app_arn = sm.create_secret(Name="txpipe-create/db-app", SecretString=json.dumps(
        dict(json.loads(gen["SecretStringTemplate"]), password=password)))["ARN"]
    # The master user as RDS makes it: not a superuser, may create roles and databases,
    # owns the database it created; its password in the RDS-managed secret.
    master_password = base64.b32encode(os.urandom(20)).decode().rstrip("=")
    pg.psql(f"CREATE ROLE {MASTER_USER} LOGIN CREATEROLE CREATEDB PASSWORD '{master_password}';\n"
            f"CREATE DATABASE txpipe OWNER {MASTER_USER};", db="postgres")
    master_arn = sm.create_secret(Name="txpipe-create/rds-master", SecretString=json.dumps(
        {"username": MASTER_USER, "password": master_password}))["ARN"]
    cfn = replace_getatt(cfn, "Database", "MasterUserSecret.SecretArn", master_arn)
    cfn = replace_ref(cfn, "DatabaseAppSecret", app_arn)
    cfn["Resources"].pop("DatabaseAppSecret")
    expected.pop("DatabaseAppSecret")
    standins.append("AWS::SecretsManager::Secret (DatabaseAppSecret) and Database.MasterUserSecret.SecretArn: "
                    "made through the Secrets Manager API (moto's CloudFormation models neither)")
    # moto 5.2 passes the DBParameterGroup object, not its name, to its DBInstance model.
    check(cfn["Resources"]["DatabaseParameters"]["Properties"]["Parameters"].get("rds.force_ssl") == "1",
          "create: the database's parameter group forces TLS (rds.force_ssl=1)")
    cfn["Resources"]["Database"]["Properties"].pop("DBParameterGroupName")
    cfn = sub_dotted_attrs(cfn)
    standins.append("Fn::Sub with ${Database.Endpoint.Address} rewritten with a variable map (moto splits it at every dot)")
    standins.append("Database without DBParameterGroupName (a moto bug: it hands its model the group object, not its name)")
    # A Lambda-backed custom resource would need the function to run (Docker): left out
    # of the stack; its handler runs below, driven the way CloudFormation drives it.
    setup = cfn["Resources"].pop("DbSetup")
    expected.pop("DbSetup")
    check(setup["Properties"].get("ServiceTimeout") == 300 and setup["Properties"]["ServiceToken"] == {"Fn::GetAtt": ["DbSetupFunction", "Arn"]},
          "create: DbSetup custom resource runs DbSetupFunction, gives up after 300 s")
    standins.append("Custom::TxpipeDbSetup left out of the stack (moto cannot run a Lambda-backed custom resource "
                    "without Docker); its handler runs below under a stand-in Lambda Runtime API")
    stack = create_stack_counted(moto, "txpipe-create", cfn, params)
    resources, outputs = stack.resources, stack.outputs
    report_types(expected, resources, standins)
    rds = moto.client("rds").describe_db_instances(DBInstanceIdentifier=stack.physical["Database"])["DBInstances"]
    group = f"/aws/rds/instance/{rds[0]['DBInstanceIdentifier']}/postgresql"
    groups = moto.client("logs").describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    check(rds[0]["DBInstanceIdentifier"] == "txpipe-" + stack.id.split("/")[2] and len(groups) == 1
          and groups[0].get("retentionInDays") == 30,
          f"create: the database {rds[0]['DBInstanceIdentifier']} (txpipe-<stack UUID>) exports to {group}, "
          "which the stack made, with 30 days' retention")
    lam = moto.client("lambda")
    det = lam.get_function_configuration(FunctionName="txpipe-create-detector")
    env = det["Environment"]["Variables"]
    check(env["TXPIPE_PG_HOST"] == rds[0]["Endpoint"]["Address"] and env["TXPIPE_PG_SSLMODE"] == "verify-full",
          "create: the detector reaches the RDS endpoint with verify-full")
    app_secret = outputs["DatabaseAppSecretArn"]
    check(env["TXPIPE_PG_SECRET_ARN"] == app_secret == app_arn and outputs["DatabaseSecretArn"] == master_arn,
          "create: the detector reads the application role's secret, not the master's")
    check(bool(det.get("VpcConfig", {}).get("SubnetIds")), "create: the detector runs in the database's VPC")
    setup_env = lam.get_function_configuration(FunctionName="txpipe-create-db-setup")["Environment"]["Variables"]
    check(setup_env.get("TXPIPE_PG_ADMIN_SECRET_ARN", "").startswith("arn:")
          and setup_env.get("TXPIPE_PG_SECRET_ARN") == app_secret, "create: DbSetupFunction has the master and app secrets")
    det_role = role_statements(moto, "txpipe-create-detector")
    check(not decide(det_role, "secretsmanager:GetSecretValue", outputs["DatabaseSecretArn"], {})
          and decide(det_role, "ec2:CreateNetworkInterface", "*", {}),
          "create: the detector's role cannot read the master secret; it may make its VPC network interfaces")
    check_db_setup(moto, pg, db_setup_bin, workdir, setup["Properties"], outputs, master_password, password)
    return stack


def check_db_setup(moto, pg, db_setup_bin, workdir, properties, outputs, master_password, app_password):
    """The DbSetup custom resource: the db-setup binary with DbSetupFunction's environment,
    driven as CloudFormation drives it (Create, Update, Delete, and a failure)."""
    step("DbSetup: the db-setup binary, with DbSetupFunction's environment, as CloudFormation drives it")
    function = "txpipe-create-db-setup"
    ca_file = os.path.join(workdir, "test-ca.pem")
    with open(ca_file, "w") as f:
        f.write(pg.ca_pem)
    # The stack's environment; only where the database is (moto's RDS endpoint is not a
    # server) and the test CA (the RDS bundle is built into the binary) are overridden.
    setup_vars, setup_env = handler_env(moto, function, {
        "TXPIPE_PG_HOST": "localhost", "TXPIPE_PG_PORT": str(pg.port), "TXPIPE_PG_CA_FILE": ca_file})
    check(setup_vars["TXPIPE_PG_SSLMODE"] == "verify-full" and setup_vars["TXPIPE_PG_DBNAME"] == "txpipe",
          "db-setup env: verify-full TLS to database txpipe")
    props = {k: (outputs["DatabaseAppSecretArn"] if k == "AppSecretArn" else v)
             for k, v in properties.items() if k not in ("ServiceTimeout",)}
    props["ServiceToken"] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}"
    runtime = LambdaRuntime(workdir)
    runtime.start(db_setup_bin, setup_env, function)
    secrets = (master_password, app_password)

    def drive(kind, physical=None, properties=props, want="SUCCESS"):
        event = {"RequestType": kind, "ServiceToken": props["ServiceToken"],
                 "ResponseURL": runtime.response_url(kind.lower()),
                 "StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/txpipe-create/0000",
                 "RequestId": f"{kind}-{time.monotonic_ns()}", "LogicalResourceId": "DbSetup",
                 "ResourceType": "Custom::TxpipeDbSetup", "ResourceProperties": properties}
        if physical:
            event["PhysicalResourceId"] = physical
        moto.start_recording()
        t0 = time.monotonic()
        kind_out, result, puts = runtime.invoke(event)
        calls = moto.stop_recording()
        if kind_out != "response":
            raise CheckFailed(f"db-setup {kind}: the handler failed ({kind_out}): {result}\n{runtime.tail()}")
        if len(puts) != 1:
            raise CheckFailed(f"db-setup {kind}: {len(puts)} PUTs to the ResponseURL, want exactly 1")
        path, headers, body = puts[0]
        answer = json.loads(body)
        check(path.endswith("?X-Amz-Signature=deploy-check-signature")
              and {k.lower(): v for k, v in headers.items()}.get("content-type") == ""
              and json.loads(result) == answer
              and {k: answer[k] for k in ("StackId", "RequestId", "LogicalResourceId")}
              == {k: event[k] for k in ("StackId", "RequestId", "LogicalResourceId")},
              f"db-setup {kind}: one PUT to the presigned ResponseURL, empty Content-Type, the request's ids")
        check(answer["Status"] == want, f"db-setup {kind}: {answer['Status']} in {time.monotonic() - t0:.1f} s "
                                        f"({answer['Reason'][:160]})")
        with open(runtime.log) as f:
            log = f.read()
        leaked = [n for n, v in (("a password", secrets[0]), ("a password", secrets[1]),
                                 ("the URL's signature", "deploy-check-signature")) if v in log or v in body]
        if leaked:
            raise CheckFailed(f"db-setup {kind}: {', '.join(leaked)} in its log or answer")
        return answer, calls

    try:
        answer, calls = drive("Create")
        check(answer["PhysicalResourceId"] == f"{APP_ROLE}@txpipe" and answer["Data"].get("MigrationsApplied", 0) > 0,
              f"db-setup Create: {answer['PhysicalResourceId']}, {answer['Data'].get('MigrationsApplied')} migrations applied as the role")
        q = lambda sql: pg.psql(sql).strip()  # noqa: E731
        check(q(f"SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = '{APP_ROLE}';") == "t|f|f|f",
              f"{APP_ROLE}: logs in, not superuser, cannot create roles or databases")
        check(q(f"SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = '{APP_ROLE}';") == "t",
              f"{APP_ROLE}'s password is stored as a SCRAM-SHA-256 verifier (the handler sent only the verifier)")
        owners = q("SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE schemaname = 'txpipe';")
        tables = q("SELECT count(*) FROM pg_tables WHERE schemaname = 'txpipe';")
        check(owners == APP_ROLE and int(tables) >= 5 and q("SELECT count(*) FROM pg_tables WHERE schemaname = 'public';") == "0",
              f"the {tables} tables are in schema txpipe, owned by {APP_ROLE}, before the first chunk; none in public")
        check_calls(moto, "db-setup", function, calls, outputs["StateTableName"])
        answer, _ = drive("Update", f"{APP_ROLE}@txpipe", dict(props, Revision="2"))
        check(answer["PhysicalResourceId"] == f"{APP_ROLE}@txpipe" and answer["Data"].get("MigrationsApplied") == 0
              and q("SELECT count(*) FROM pg_tables WHERE schemaname = 'txpipe';") == tables,
              "db-setup Update is idempotent: same id, no migration left, same tables")
        answer, _ = drive("Delete", f"{APP_ROLE}@txpipe")
        check(q(f"SELECT count(*) FROM pg_roles WHERE rolname = '{APP_ROLE}';") == "1",
              "db-setup Delete: SUCCESS, the role and its data are kept")
        # A wrong master password (as after a rotation the setup did not see): FAILED,
        # with the server's reason and where the log is, never the password.
        sm = moto.client("secretsmanager")
        master_arn = setup_vars["TXPIPE_PG_ADMIN_SECRET_ARN"]
        sm.put_secret_value(SecretId=master_arn, SecretString=json.dumps({"username": MASTER_USER, "password": "wrong-" + master_password}))
        answer, _ = drive("Update", f"{APP_ROLE}@txpipe", dict(props, Revision="3"), want="FAILED")
        check("28P01" in answer["Reason"] and "/aws/lambda/" in answer["Reason"] and master_password not in answer["Reason"],
              "db-setup failure: FAILED with the server's reason (SQLSTATE 28P01) and the log stream, no password")
        sm.put_secret_value(SecretId=master_arn, SecretString=json.dumps({"username": MASTER_USER, "password": master_password}))
    finally:
        runtime.stop()
    note("not run by moto: CloudFormation invoking the custom resource and waiting for its answer "
         "(driven here with the same request and a stand-in ResponseURL); the ResponseURL is HTTPS in AWS")
    # The existing-mode check makes the role again from nothing, with infra/db/app_role.py.
    pg.psql(f"DROP DATABASE txpipe WITH (FORCE);\nDROP ROLE {APP_ROLE};", db="postgres")


def check_reservation():
    step("detector reservation: a parameter, unreserved by default; make deploy's quota check")
    for value, expect in (("0", None), ("3", "3")):
        params = {"DatabaseMode": "existing", "ExistingDbSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:x",
                  "DetectorReservedConcurrency": value}
        cfn = translate(params)
        got = resolve(cfn["Resources"]["DetectorFunction"]["Properties"].get("ReservedConcurrentExecutions"), cfn, params)
        check(got == expect, f"DetectorReservedConcurrency={value}: the detector is "
                             + ("unreserved" if expect is None else f"reserved at {expect}"))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "infra", "preflight.py"), "--self-test"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise CheckFailed(f"infra/preflight.py --self-test failed:\n{out.stdout}{out.stderr}")
    ok(out.stderr.strip())


def check_existing_mode(moto, binary, chunker_bin, detector_bin, workdir, pg):
    step("DatabaseMode=existing: the app role from infra/db/app-role.sql (infra/db/app_role.py), as an operator makes it")
    # As an operator would on RDS: as the master user (not a superuser; made in the
    # create-mode step), owner of the database.
    pg.psql(f"CREATE DATABASE txpipe OWNER {MASTER_USER};", db="postgres")
    password = base64.b32encode(os.urandom(25)).decode().rstrip("=")
    pg.psql(app_role.render(APP_ROLE, password, "txpipe"), user=MASTER_USER)
    roles = pg.psql(f"SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = '{APP_ROLE}';").strip()
    check(roles == "f|f|f", f"{APP_ROLE}: logs in, not superuser, cannot create roles or databases")
    pg.psql(app_role.render(APP_ROLE, password, "txpipe"), user=MASTER_USER)
    ok(f"app-role.sql, run by the master user {MASTER_USER} (CREATEROLE, not a superuser), is idempotent (ran twice)")
    sm = moto.client("secretsmanager")
    secret_arn = sm.create_secret(Name="txpipe-check/db-app", SecretString=json.dumps(
        {"username": APP_ROLE, "password": password, "host": "localhost", "port": pg.port, "dbname": "txpipe"}))["ARN"]
    ok(f"Postgres {pg.port} with TLS (test CA) and scram-sha-256; secret {secret_arn.rsplit(':', 1)[1]} in moto")

    step("DatabaseMode=existing: translate and create the stack in moto")
    params = dict({"DatabaseMode": "existing", "ExistingDbSecretArn": secret_arn, "AlarmEmail": "ops@example.com",
                   "DeletionProtection": "false"}, **PATTERN_PARAMS)
    cfn = translate(params)
    static_checks(cfn, params, "existing")
    check_dependencies(cfn, params, "existing")
    expected = expected_resources(cfn, params)
    stack = create_stack_counted(moto, STACK, cfn, params)
    resources, outputs = stack.resources, stack.outputs
    report_types(expected, resources)
    lam = moto.client("lambda")
    chunker_fn, detector_fn = outputs["ChunkerFunctionName"], outputs["DetectorFunctionName"]
    for fn in (chunker_fn, detector_fn):
        conc = lam.get_function_concurrency(FunctionName=fn).get("ReservedConcurrentExecutions")
        check(conc is None, f"{fn}: unreserved")

    step("chunker: its Lambda binary (bootstrap) with the chunker's environment from moto's Lambda, one tick")
    bucket = outputs["PipelineBucketName"]
    chunker_vars, _ = handler_env(moto, chunker_fn, {})
    check("TXPIPE_DETECTOR_FUNCTION" not in chunker_vars and int(chunker_vars["TXPIPE_DETECTOR_STALL_SECS"]) > 0,
          f"chunker env: TXPIPE_DETECTOR_STALL_SECS={chunker_vars['TXPIPE_DETECTOR_STALL_SECS']} (a stalled detector "
          "is woken by writing its next chunk again), no function to invoke")
    data = os.path.join(workdir, "data")
    subprocess.run([binary, "generate", "--rows", str(ROWS), "--customers", str(CUSTOMERS), "--out", data],
                   check=True, capture_output=True)
    s3 = moto.client("s3")
    src_bucket = outputs["SourceBucketName"]
    s3.upload_file(os.path.join(data, "CustomerImportance.csv"), src_bucket, chunker_vars.get("TXPIPE_IMPORTANCE_KEY", "input/CustomerImportance.csv"))
    s3.upload_file(os.path.join(data, "transactions.csv"), src_bucket, chunker_vars["TXPIPE_SOURCE_KEY"])
    ok(f"generated {ROWS} rows / {CUSTOMERS} customers, uploaded to s3://{src_bucket}/input/")
    t0 = time.monotonic()
    answer, records, chunker_calls = run_lambda(moto, chunker_bin, chunker_fn, workdir, {}, {
        "TXPIPE_CHUNKER_BUDGET_SECS": "20", "TXPIPE_CHUNK_INTERVAL_MS": "0"}, timeout=60)
    stack.records += records
    per_chunk = int(chunker_vars["TXPIPE_ROWS_PER_CHUNK"])
    want = -(-ROWS // per_chunk)
    chunks = sorted(list_keys(s3, bucket, "chunks/"))
    check(len(chunks) == want, f"chunker cut {len(chunks)} chunks under chunks/ in {time.monotonic() - t0:.1f} s "
                               f"(want {want}): {', '.join(k for k, _ in chunks)}")
    note(f"chunker answered {json.dumps(answer)[:200]}")
    check_calls(moto, "chunker", chunker_fn, chunker_calls, outputs["StateTableName"])

    step("detector: its Lambda binary with the detector's environment, the ObjectCreated event of the last chunk")
    last_key, last_size = chunks[-1]
    ca_file = os.path.join(workdir, "test-ca.pem")
    with open(ca_file, "w") as f:
        f.write(pg.ca_pem)
    with open(os.path.join(ROOT, "shared", "pipeline", "certs", "rds-global-bundle.pem")) as f:
        rds_bundle = f.read()
    detector_vars, _ = handler_env(moto, detector_fn, {})
    check(detector_vars["TXPIPE_PG_SSLMODE"] == "verify-full" and detector_vars["TXPIPE_PG_SECRET_ARN"] == secret_arn,
          "detector env: verify-full, the app role's secret")
    note(f"TXPIPE_PG_CA_FILE = the test CA only (the RDS bundle, {rds_bundle.count('BEGIN CERTIFICATE')} certs, "
         "is built into the binary); no other override")
    check(detector_vars["TXPIPE_SNAPSHOT_MAX_DELTAS"] == "200" and detector_vars["TXPIPE_PARK_AFTER_ATTEMPTS"] == "3",
          "detector env: TXPIPE_SNAPSHOT_MAX_DELTAS=200, TXPIPE_PARK_AFTER_ATTEMPTS=3 (the defaults)")
    wrong = {var: detector_vars.get(var) for var, (param, value) in PATTERN_VARS.items()
             if detector_vars.get(var) != str(value)}
    check(not wrong, f"detector env: the {len(PATTERN_VARS)} pattern parameters (non-default here) reach their "
          f"variables{': wrong ' + str(wrong) if wrong else ''}")
    t0 = time.monotonic()
    answer, records, detector_calls = run_lambda(moto, detector_bin, detector_fn, workdir,
                                                 s3_event(bucket, last_key, last_size), {"TXPIPE_PG_CA_FILE": ca_file})
    stack.records += records
    note(f"detector answered in {time.monotonic() - t0:.1f} s: {json.dumps(answer)[:300]}")
    if answer.get("status") != "ok":
        raise CheckFailed(f"the detector did not apply the event: {json.dumps(answer)}")
    files = sorted(list_keys(s3, bucket, "detections/"))
    lines = 0
    for key, _ in files:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        for line in body.splitlines():
            rec = json.loads(line)
            for field in ("YStartTime", "detectionTime", "patternId", "ActionType", "customerName", "MerchantId"):
                if field not in rec:
                    raise CheckFailed(f"{key}: a detection without {field} (the Glue table reads it): {line}")
            lines += 1
    q = lambda sql: pg.psql(sql).strip()  # noqa: E731
    ledger = int(q("SELECT count(*) FROM txpipe.chunks;"))
    pg_detections = int(q("SELECT count(*) FROM txpipe.detections;"))
    check(ledger == want, f"Postgres: {ledger} chunks applied in txpipe.chunks (want {want})")
    check(lines > 0 and pg_detections == lines and len(files) == -(-lines // 50),
          f"{lines} detections: {len(files)} files under detections/ (50 a file) and {pg_detections} rows in Postgres")
    evidence_files = sorted(list_keys(s3, bucket, "evidence/"))
    same_lines = all(
        [json.loads(e)["customerName"] for e in s3.get_object(Bucket=bucket, Key=ek)["Body"].read().decode().splitlines()]
        == [json.loads(d)["customerName"] for d in s3.get_object(Bucket=bucket, Key=dk)["Body"].read().decode().splitlines()]
        for (ek, _), (dk, _) in zip(evidence_files, files))
    with_evidence = int(q("SELECT count(*) FROM txpipe.detections WHERE evidence IS NOT NULL;"))
    check(len(evidence_files) == len(files) and same_lines and with_evidence == lines,
          f"evidence: {len(evidence_files)} files under evidence/, line for line beside the detection files; "
          f"{with_evidence} Postgres detections with their evidence")
    owners = q(f"SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'txpipe';")
    public = q("SELECT count(*) FROM pg_tables WHERE schemaname = 'public';")
    check(owners == APP_ROLE and public == "0", f"the detector's tables are in schema txpipe, owned by {APP_ROLE}; none in public")
    ok("the detector connected with verify-full TLS (pg_hba: hostssl only) and the role's SCRAM password")
    ddb = moto.client("dynamodb")
    items = ddb.scan(TableName=outputs["StateTableName"], ProjectionExpression="pk")["Items"]
    kinds = sorted({i["pk"]["S"].split("#", 1)[0] for i in items})
    ok(f"state table items by kind: {', '.join(kinds)}")
    check("delta" not in kinds, "no delta# items: the detector's deltas and snapshots are S3 objects under state/")
    heads = ddb.scan(TableName=outputs["StateTableName"], FilterExpression="begins_with(pk, :h)",
                     ExpressionAttributeValues={":h": {"S": "head#"}})["Items"]
    pinned = [h.get("fingerprint", {}).get("S", "") for h in heads]
    want_pin = "upgrade>49999:top101bp:bottom99bp;child>=79:avg<2301;dei>99"
    check(len(pinned) == 1 and want_pin in pinned[0],
          f"the stream's head pins the thresholds it ran with ({want_pin}): {pinned}")

    def item_bytes(item):  # DynamoDB's item size: names plus values (numbers approximated)
        size = 0
        for name, value in item.items():
            (kind, v), = value.items()
            size += len(name.encode()) + (len(bytes(v)) if kind == "B" else 1 if kind == "BOOL"
                                          else len(v) // 2 + 2 if kind == "N" else len(str(v).encode()))
        return size
    sizes = {i["pk"]["S"].split("#", 1)[0]: item_bytes(i) for i in ddb.scan(TableName=outputs["StateTableName"])["Items"]}
    note("item sizes after the run (bytes): " + ", ".join(f"{k} {v}" for k, v in sorted(sizes.items()))
         + f"; state/ objects: {len(list_keys(s3, bucket, 'state/'))}")
    check_calls(moto, "detector", detector_fn, detector_calls, outputs["StateTableName"])
    least_privilege_probes(moto, chunker_fn, detector_fn, outputs)
    return stack


def tick_other_stack(moto, stack, chunker_bin, workdir, ticks=2):
    """The other stack's chunker, before its input is uploaded: it ticks (heartbeat),
    waits for input, cuts nothing."""
    step(f"{stack.name}: its chunker's Lambda binary, {ticks} ticks before any input (the second stack's heartbeat)")
    fn = stack.outputs["ChunkerFunctionName"]
    calls = []
    for _ in range(ticks):
        answer, records, made = run_lambda(moto, chunker_bin, fn, workdir, {}, timeout=60)
        stack.records += records
        calls += made
    waiting = [r["value"] for r in stack.records if r["name"] == "WaitingForInput"]
    check(waiting == [1.0] * ticks, f"{fn}: {ticks} ticks, each waiting for input ({json.dumps(answer)[:120]})")
    check_calls(moto, "chunker (waiting)", fn, calls, stack.outputs["StateTableName"])


def least_privilege_probes(moto, chunker_fn, detector_fn, outputs):
    """The evaluator is not vacuous: calls the roles must NOT allow are denied."""
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{outputs['StateTableName']}"
    bucket = f"arn:aws:s3:::{outputs['PipelineBucketName']}"
    lead = lambda k: {"dynamodb:LeadingKeys": [k]}  # noqa: E731
    chunker, detector = role_statements(moto, chunker_fn), role_statements(moto, detector_fn)
    stream = lambda fn: f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{fn}:log-stream:2025/01/01/[$LATEST]0"  # noqa: E731
    must = [
        (chunker, "dynamodb:PutItem", table, lead("head#s"), False, "chunker PutItem head#"),
        (chunker, "dynamodb:GetItem", table, lead("head#s"), True, "chunker GetItem head#"),
        (chunker, "dynamodb:GetItem", table, lead("delta#s"), False, "chunker GetItem delta#"),
        (chunker, "s3:PutObject", f"{bucket}/detections/s/00000000.jsonl", {}, False, "chunker PutObject detections/"),
        (chunker, "s3:PutObject", f"{bucket}/evidence/s/00000000.jsonl", {}, False, "chunker PutObject evidence/"),
        (detector, "s3:PutObject", f"{bucket}/evidence/s/00000000.jsonl", {}, True, "detector PutObject evidence/"),
        (detector, "s3:GetObject", f"{bucket}/detections/s/00000000.jsonl", {}, True,
         "detector GetObject detections/ (a redo compares a published file's bytes)"),
        (detector, "s3:GetObject", f"{bucket}/evidence/s/00000000.jsonl", {}, True, "detector GetObject evidence/"),
        (detector, "s3:DeleteObject", f"{bucket}/evidence/s/00000000.jsonl", {}, False, "detector DeleteObject evidence/"),
        (chunker, "s3:PutObject", f"{bucket}/chunks/s/00000000.csv", {}, True, "chunker PutObject chunks/"),
        (chunker, "s3:GetObject", f"{bucket}/chunks/s/00000000.csv", {}, True, "chunker GetObject chunks/ (HEAD to date its last write)"),
        (chunker, "s3:GetObject", f"{bucket}/state/s/head", {}, False, "chunker GetObject state/"),
        (chunker, "lambda:InvokeFunction", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{detector_fn}", {}, False, "chunker invokes the detector"),
        (detector, "dynamodb:PutItem", table, lead("cursor#s"), False, "detector PutItem cursor#"),
        (detector, "dynamodb:GetItem", table, lead("cursor#s"), True, "detector GetItem cursor#"),
        (detector, "dynamodb:PutItem", table, lead("head#s"), True, "detector PutItem head#"),
        (detector, "dynamodb:DeleteItem", table, lead("lease#s"), True, "detector DeleteItem lease#"),
        (detector, "dynamodb:PutItem", table, lead("delta#s"), False, "detector PutItem delta#"),
        (detector, "dynamodb:UpdateItem", table, lead("lease#s"), False, "detector UpdateItem lease#"),
        (detector, "dynamodb:Query", table, lead("head#s"), False, "detector Query"),
        (detector, "dynamodb:BatchWriteItem", table, lead("head#s"), False, "detector BatchWriteItem"),
        (detector, "dynamodb:Scan", table, {}, False, "detector Scan"),
        (detector, "s3:PutObject", f"{bucket}/state/s/delta-00000000.bin", {}, True, "detector PutObject state/"),
        (detector, "s3:DeleteObject", f"{bucket}/state/s/snapshot-00000020/part-0000.bin", {}, True, "detector DeleteObject state/"),
        (detector, "s3:ListBucket", bucket, {}, True, "detector ListBucket"),
        (detector, "s3:PutObject", f"{bucket}/chunks/s/00000000.csv", {}, False, "detector PutObject chunks/"),
        (detector, "s3:DeleteObject", f"{bucket}/chunks/s/00000000.csv", {}, False, "detector DeleteObject chunks/"),
        (detector, "lambda:InvokeFunction", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{chunker_fn}", {}, False, "detector invokes the chunker"),
        (chunker, "logs:PutLogEvents", stream(chunker_fn), {}, True, "chunker PutLogEvents to its own log group"),
        (chunker, "logs:PutLogEvents", stream(detector_fn), {}, False, "chunker PutLogEvents to the detector's log group"),
        (detector, "logs:CreateLogStream", stream(detector_fn), {}, True, "detector CreateLogStream in its own log group"),
        (detector, "logs:CreateLogGroup", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{detector_fn}", {}, False,
         "detector CreateLogGroup (the stack makes it)"),
        (detector, "logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/other:log-stream:x", {}, False,
         "detector PutLogEvents to another log group"),
        (detector, "ec2:CreateNetworkInterface", "*", {}, False, "detector (no VPC in this mode) CreateNetworkInterface"),
        (chunker, "ec2:CreateNetworkInterface", "*", {}, False, "chunker CreateNetworkInterface"),
    ]
    wrong = [f"{what}: {'allowed' if not want else 'denied'}"
             for st, action, res, ctx, want, what in must if decide(st, action, res, ctx) != want]
    if wrong:
        raise CheckFailed("least privilege: " + "; ".join(wrong))
    ok(f"least privilege: {len(must)} probes (e.g. chunker invokes the detector, detector PutItem delta#, Scan, logs "
       "outside its own group, network interfaces without a VPC) decided as intended")


def main():
    if len(sys.argv) != 5:
        print("usage: deploy_check.py <txpipe binary> <chunker binary> <detector binary> <db-setup binary>",
              file=sys.stderr)
        return 2
    binary, chunker_bin, detector_bin, db_setup_bin = (os.path.abspath(a) for a in sys.argv[1:5])
    for b in (binary, chunker_bin, detector_bin, db_setup_bin):
        if not os.access(b, os.X_OK):
            print(f"deploy-check: {b} is not an executable", file=sys.stderr)
            return 2
    workdir = tempfile.mkdtemp(prefix="txpipe-deploy-check-")
    os.chmod(workdir, 0o755)
    moto = pg = None
    try:
        step(f"moto server ({os.environ.get('TXPIPE_MOTO_CMD')}), work dir {workdir}")
        moto = Moto(workdir)
        ok(f"moto at {moto.url}")
        s3 = moto.client("s3")
        s3.create_bucket(Bucket="txpipe-check-artifacts")
        buf = BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("bootstrap", "stand-in: the handlers run here under the Lambda Runtime API stand-in")
        s3.put_object(Bucket="txpipe-check-artifacts", Key="bootstrap.zip", Body=buf.getvalue())
        check_reservation()
        step("throwaway Postgres: TLS from a test CA, hostssl + scram-sha-256 only (like RDS with rds.force_ssl)")
        pg = Postgres(workdir)
        ok(f"Postgres on port {pg.port}")
        create = check_create_mode(moto, pg, db_setup_bin, workdir)
        existing = check_existing_mode(moto, binary, chunker_bin, detector_bin, workdir, pg)
        tick_other_stack(moto, create, chunker_bin, workdir)
        check_two_stacks(moto, [existing, create])
        check_alarm_delivery(moto, existing, create)
        check_preflight(moto, create, existing, workdir)
        check_teardown(moto, existing, purge=False)
        check_teardown(moto, create, purge=True)
    except CheckFailed as e:
        print(f"\ndeploy-check FAILED: {e}\n(logs in {workdir})", file=sys.stderr, flush=True)
        print(f"deploy-check: {PASSED[0]} passed, 1 failed", flush=True)
        return 1
    finally:  # also after an unexpected exception, which leaves its traceback
        for service in (pg, moto):
            if service:
                service.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"deploy-check: all checks passed in {time.monotonic() - START:.1f} s", flush=True)
    print(f"deploy-check: {PASSED[0]} passed, 0 failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
