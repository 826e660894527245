#!/usr/bin/env python3
"""Checks the rendered Kubernetes manifests against the runstore binary.

  check_manifests.py static --help-file F --dockerfile D --secret-example S RENDERED...
      probes, ports, flags, env, shutdown timing and security settings of
      each rendered overlay (one multi-document YAML file each), plus the
      Dockerfile's CMD/ENV/EXPOSE and the example Secret;
  check_manifests.py live --bin B --probe P RENDERED
      starts the binary with the first workload's args and env (addresses
      moved to loopback) and probes the health services the manifests name.

Exit status 1 and one line per problem when a check fails.
"""

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

LIVENESS = ""
READINESS = "orchestrator.persistence.v1.PersistenceService"
UID = 10001
# terminationGracePeriodSeconds must exceed the server's grace by this much:
# after the grace the server still closes storage and exits.
MIN_MARGIN_SECONDS = 5
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def parse_help(text):
    """Flags of `serve --help`: {"--flag": "RUNSTORE_X" or None}, and defaults."""
    flags, defaults, current = {}, {}, None
    for line in text.splitlines():
        match = re.match(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", line)
        if match:
            current = match.group(1)
            flags[current] = None
            continue
        if current is None:
            continue
        env = re.search(r"\[env: ([A-Z0-9_]+)", line)
        if env:
            flags[current] = env.group(1)
        default = re.search(r"\[default: ([^\]]*)\]", line)
        if default:
            defaults[current] = default.group(1)
    return flags, defaults


def seconds(value):
    """A humantime duration as the flags take it (e.g. 25s, 1m30s, 500ms)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h)", value)
    if not parts or re.sub(r"(\d+)\s*(ms|s|m|h)|\s", "", value):
        raise ValueError(f"not a duration: {value!r}")
    return sum(int(n) * units[u] for n, u in parts)


def load(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


class Checker:
    def __init__(self, flags, defaults):
        self.flags, self.defaults = flags, defaults
        self.envs = {env: flag for flag, env in flags.items() if env}
        self.problems = []

    def fail(self, where, message):
        self.problems.append(f"{where}: {message}")

    def settings(self, where, args, env):
        """Checks every flag and RUNSTORE_* variable; returns {flag: value}."""
        values = {}
        if not args or args[0] != "serve":
            self.fail(where, f"args must start with the serve command, not {args[:1]}")
        i = 1
        while i < len(args):
            arg = args[i]
            if not arg.startswith("--"):
                self.fail(where, f"unexpected argument {arg!r}")
                i += 1
                continue
            name, eq, value = arg.partition("=")
            if name not in self.flags:
                self.fail(where, f"flag {name} is not one `runstore serve` accepts")
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            values[name] = value
            i += 1
        for var in env:
            name = var["name"]
            if not name.startswith("RUNSTORE_"):
                continue
            flag = self.envs.get(name)
            if flag is None:
                self.fail(where, f"env {name} is not a variable `runstore serve` reads")
                continue
            if flag in values:
                # The flag would silently win over the variable.
                self.fail(where, f"{flag} is set both as an arg and as env {name}")
            values[flag] = var.get("value", "<from " + ",".join(var.get("valueFrom", {})) + ">")
        return values

    def workload(self, where, obj, services):
        spec = obj["spec"]["template"]["spec"]
        labels = obj["spec"]["template"].get("metadata", {}).get("labels", {})
        containers = spec.get("containers", [])
        if [c["name"] for c in containers] != ["runstore"]:
            self.fail(where, "expected exactly one container, named runstore")
            return
        c = containers[0]
        ports = {p["containerPort"]: p.get("name") for p in c.get("ports", [])}
        names = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        if names.get("grpc") != 50051 or names.get("metrics") != 9464:
            self.fail(where, f"container ports must be grpc 50051 and metrics 9464: {names}")

        for kind, service in (
            ("startupProbe", LIVENESS),
            ("livenessProbe", LIVENESS),
            ("readinessProbe", READINESS),
        ):
            probe = c.get(kind)
            if not probe or "grpc" not in probe:
                self.fail(where, f"{kind} must be a native gRPC probe")
                continue
            port = probe["grpc"].get("port")
            if port not in ports:
                self.fail(where, f"{kind} port {port} is no containerPort ({sorted(ports)})")
            elif ports[port] != "grpc":
                self.fail(where, f"{kind} probes port {port}, not the grpc port")
            got = probe["grpc"].get("service", "")
            if got != service:
                self.fail(where, f"{kind} checks service {got!r}, expected {service!r}")

        values = self.settings(where, c.get("args", []), c.get("env", []))
        for flag, want in (
            ("--listen", "0.0.0.0:50051"),
            ("--metrics-listen", "0.0.0.0:9464"),
            ("--log-format", "json"),
        ):
            if values.get(flag) != want:
                self.fail(where, f"{flag} must be {want}, is {values.get(flag)}")
        try:
            grace = seconds(values.get("--shutdown-grace", self.defaults.get("--shutdown-grace", "30s")))
            delay = seconds(values.get("--shutdown-delay", self.defaults.get("--shutdown-delay", "0s")))
            period = spec.get("terminationGracePeriodSeconds", 30)
            # The server's grace includes the delay (config.rs).
            if delay >= grace:
                self.fail(where, f"--shutdown-delay {delay}s leaves nothing of --shutdown-grace {grace}s")
            if period < grace + MIN_MARGIN_SECONDS:
                self.fail(
                    where,
                    f"terminationGracePeriodSeconds {period} < --shutdown-grace {grace}s"
                    f" + {MIN_MARGIN_SECONDS}s margin",
                )
        except ValueError as err:
            self.fail(where, str(err))

        pod_sc = spec.get("securityContext", {})
        for key, want in (("runAsNonRoot", True), ("runAsUser", UID), ("runAsGroup", UID)):
            if pod_sc.get(key) != want:
                self.fail(where, f"pod securityContext.{key} must be {want}")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            self.fail(where, "pod seccompProfile must be RuntimeDefault")
        sc = c.get("securityContext", {})
        for key, want in (("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)):
            if sc.get(key) is not want:
                self.fail(where, f"container securityContext.{key} must be {want}")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            self.fail(where, "container capabilities must drop ALL")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(part, {})):
                self.fail(where, f"resources.{part} must set cpu and memory")

        # Every Service that selects these pods must target their ports.
        selecting = [
            s for s in services
            if s["spec"].get("selector") and s["spec"]["selector"].items() <= labels.items()
        ]
        if not selecting:
            self.fail(where, "no Service selects the pods")
        for s in selecting:
            for p in s["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                ok = target in names if isinstance(target, str) else target in ports
                if not ok:
                    self.fail(f"Service/{s['metadata']['name']}", f"port {p.get('name')} targets {target!r}, no containerPort")
                if p.get("name") == "grpc" and p.get("appProtocol") != "grpc":
                    self.fail(f"Service/{s['metadata']['name']}", "port grpc needs appProtocol: grpc")
        if not any(
            p.get("name") == "metrics" and s["metadata"].get("labels")
            for s in selecting for p in s["spec"]["ports"]
        ):
            self.fail(where, "no labelled Service has a port named metrics (for a ServiceMonitor)")
        return values, spec, c

    def overlay(self, path, secret_example):
        objs = load(path)
        services = [o for o in objs if o["kind"] == "Service"]
        workloads = [o for o in objs if o["kind"] in WORKLOAD_KINDS]
        if len(workloads) != 1:
            self.fail(path, f"expected one workload, found {len(workloads)}")
            return
        w = workloads[0]
        where = f"{path}: {w['kind']}/{w['metadata']['name']}"
        checked = self.workload(where, w, services)
        if checked is None:
            return
        values, spec, c = checked
        if w["kind"] == "StatefulSet":
            # SQLite: one pod with its claim mounted at the data dir.
            if w["spec"].get("replicas") != 1:
                self.fail(where, "the SQLite StatefulSet must run exactly one replica")
            claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            data_dir = values.get("--data-dir", self.defaults.get("--data-dir"))
            if mounts.get(data_dir) not in claims:
                self.fail(where, f"--data-dir {data_dir} is not a volumeClaimTemplate mount")
            governing = [s for s in services if s["metadata"]["name"] == w["spec"].get("serviceName")]
            if not governing or governing[0]["spec"].get("clusterIP") != "None":
                self.fail(where, f"serviceName {w['spec'].get('serviceName')} is no headless Service")
        else:
            # PostgreSQL: replicas, the URL from the Secret, a PDB, spreading.
            if w["spec"].get("replicas", 1) < 2:
                self.fail(where, "the PostgreSQL Deployment should run several replicas")
            storage = [e for e in c.get("env", []) if e["name"] == "RUNSTORE_STORAGE"]
            ref = storage[0].get("valueFrom", {}).get("secretKeyRef") if storage else None
            if not ref:
                self.fail(where, "RUNSTORE_STORAGE must come from a secretKeyRef")
            elif secret_example:
                secret = load(secret_example)[0]
                keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
                if secret["metadata"]["name"] != ref["name"] or ref["key"] not in keys:
                    self.fail(secret_example, f"does not provide Secret {ref['name']} key {ref['key']}")
            labels = w["spec"]["template"]["metadata"]["labels"]
            pdbs = [
                o for o in objs if o["kind"] == "PodDisruptionBudget"
                and o["spec"]["selector"].get("matchLabels", {}).items() <= labels.items()
            ]
            if not pdbs:
                self.fail(where, "no PodDisruptionBudget selects the pods")
            if not spec.get("topologySpreadConstraints"):
                self.fail(where, "no topologySpreadConstraints")

    def dockerfile(self, path):
        text = open(path).read()
        final = text.split("\nFROM ")[-1]
        cmd = re.search(r"^CMD (\[.*\])$", final, re.M)
        if not cmd:
            self.fail(path, "the runtime stage needs an exec-form CMD")
        else:
            args = json.loads(cmd.group(1))
            self.settings(f"{path} CMD", args, [])
        # ENV a=b c=d, continued over lines with a backslash.
        for block in re.findall(r"^ENV ((?:.*\\\n)*.*)$", final, re.M):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", block):
                if name.startswith("RUNSTORE_") and name not in self.envs:
                    self.fail(path, f"ENV {name} is not a variable `runstore serve` reads")
        exposed = {int(p) for line in re.findall(r"^EXPOSE (.*)$", final, re.M) for p in line.split()}
        if exposed != {50051, 9464}:
            self.fail(path, f"EXPOSE must list 50051 and 9464, lists {sorted(exposed)}")
        if not re.search(rf"^USER {UID}(:{UID})?$", final, re.M):
            self.fail(path, f"the runtime stage must run as USER {UID}:{UID}")
        if "STOPSIGNAL SIGTERM" not in final:
            self.fail(path, "STOPSIGNAL SIGTERM missing")


def static(opts):
    flags, defaults = parse_help(open(opts.help_file).read())
    if "--listen" not in flags or flags["--listen"] != "RUNSTORE_LISTEN":
        sys.exit(f"could not parse flags from {opts.help_file}: {flags}")
    checker = Checker(flags, defaults)
    checker.dockerfile(opts.dockerfile)
    for path in opts.rendered:
        checker.overlay(path, opts.secret_example)
    for problem in checker.problems:
        print(f"FAIL {problem}")
    if checker.problems:
        return 1
    print(f"manifests OK: {len(opts.rendered)} overlays, Dockerfile, against {len(flags)} flags of serve --help")
    return 0


class Server:
    """The binary, started with a workload's args and env; its log is read
    line by line on a thread, so every wait on it can be bounded."""

    def __init__(self, binary, args, env):
        self.proc = subprocess.Popen(
            [binary, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines = []
        self.queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.queue.put(line.rstrip())
        self.queue.put(None)

    def wait_for(self, message, timeout):
        """The first JSON log line with this message, as a dict."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == message:
                return record
        raise RuntimeError(f"no {message!r} log line within {timeout}s:\n" + "\n".join(self.lines))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def probe(tool, addr, service):
    """grpc-health-probe's exit status: 0 SERVING, 4 NOT_SERVING, others errors."""
    run = subprocess.run(
        [tool, "-addr", addr, "-service", service, "-connect-timeout", "2s", "-rpc-timeout", "2s"],
        capture_output=True, text=True, timeout=10,
    )
    return run.returncode, (run.stdout + run.stderr).strip()


def live(opts):
    objs = load(opts.rendered)
    w = next(o for o in objs if o["kind"] in WORKLOAD_KINDS)
    spec = w["spec"]["template"]["spec"]
    c = spec["containers"][0]
    args = list(c["args"])
    if "--listen" not in args:
        sys.exit("the workload's args set no --listen")
    # The manifest's own args and values, addresses moved to loopback.
    args[args.index("--listen") + 1] = "127.0.0.1:0"
    data = tempfile.mkdtemp(prefix="runstore-deploy-check-")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    env["RUNSTORE_DATA_DIR"] = data
    env["SQLITE_TMPDIR"] = data
    env["RUNSTORE_METRICS_LISTEN"] = "127.0.0.1:0"
    problems = []
    server = Server(opts.bin, args, env)
    try:
        # main.rs logs the metrics address first, then the gRPC one.
        metrics = server.wait_for("metrics listening", 30)["addr"]
        addr = server.wait_for("listening", 30)["addr"]
        print(f"server up at {addr}, metrics at {metrics}, with the manifest's args: {' '.join(args)}")

        status, out = probe(opts.probe, addr, LIVENESS)
        print(f"liveness  (service \"\"): exit {status}: {out}")
        if status != 0:
            problems.append(f"liveness service {LIVENESS!r} not SERVING: {out}")
        # Readiness follows the first storage probe, which runs at start.
        deadline = time.monotonic() + 20
        while True:
            status, out = probe(opts.probe, addr, READINESS)
            if status == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print(f"readiness (service {READINESS}): exit {status}: {out}")
        if status != 0:
            problems.append(f"readiness service {READINESS!r} not SERVING: {out}")
        # The metrics port the manifests expose serves, and agrees.
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as reply:
            body = reply.read().decode()
        ready = re.search(r"^runstore_storage_ready (\S+)$", body, re.M)
        print(f"GET http://{metrics}/metrics: {reply.status}, {len(body)} bytes, "
              f"runstore_storage_ready {ready.group(1) if ready else 'missing'}")
        if not ready or float(ready.group(1)) != 1:
            problems.append("/metrics does not report runstore_storage_ready 1 while ready")
        # Negative control: the probe does tell an unknown service apart.
        status, out = probe(opts.probe, addr, READINESS + "X")
        print(f"control   (service {READINESS}X): exit {status}: {out}")
        if status == 0:
            problems.append("an unknown service reported SERVING: the probe proves nothing")

        # Shutdown: NOT_SERVING during --shutdown-delay, exit 0 well inside
        # terminationGracePeriodSeconds.
        began = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        status, out = probe(opts.probe, addr, LIVENESS)
        print(f"after SIGTERM, liveness: exit {status}: {out}")
        if status == 0:
            problems.append("liveness still SERVING during the shutdown delay")
        period = spec.get("terminationGracePeriodSeconds", 30)
        try:
            code = server.proc.wait(timeout=period)
            took = time.monotonic() - began
            print(f"exited {code} {took:.1f}s after SIGTERM (terminationGracePeriodSeconds {period})")
            if code != 0:
                problems.append(f"exit status {code} after SIGTERM")
        except subprocess.TimeoutExpired:
            problems.append(f"still running {period}s after SIGTERM: the kubelet would SIGKILL it")
    except (RuntimeError, OSError) as err:
        problems.append(str(err))
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    for problem in problems:
        print(f"FAIL {problem}")
    return 1 if problems else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("static")
    s.add_argument("--help-file", required=True)
    s.add_argument("--dockerfile", required=True)
    s.add_argument("--secret-example")
    s.add_argument("rendered", nargs="+")
    lv = sub.add_parser("live")
    lv.add_argument("--bin", required=True)
    lv.add_argument("--probe", required=True)
    lv.add_argument("rendered")
    opts = parser.parse_args()
    return static(opts) if opts.command == "static" else live(opts)


if __name__ == "__main__":
    sys.exit(main())
