#!/usr/bin/env python3
"""Offline consistency checks of deploy/: the part of deploy/validate.sh that
no off-the-shelf tool does.

Schemas say a manifest is well-formed; these checks say the files agree with
each other and keep the properties the deployment depends on: selectors that
select, ports that exist, no subPath (live reload), a grace period longer than
the shutdown grace, the same authgate.toml in the image and the ConfigMap,
alerts that only use documented metrics. Each check prints one line,
`ok  ...` or `FAIL ...`; the exit status is the number of failures (capped).

Usage: python3 deploy/validate.py REPO_ROOT
Needs PyYAML and the `dockerfile` package (deploy/requirements-validate.txt).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

FAILURES: list[str] = []


def check(ok: bool, what: str, why: str = "") -> bool:
    """Record and print one check."""
    if ok:
        print(f"  ok    {what}")
    else:
        FAILURES.append(what)
        print(f"  FAIL  {what}" + (f": {why}" if why else ""))
    return ok


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML keeps the last one
    silently; the Kubernetes API server rejects them or keeps the last, which
    hides a half-edited manifest)."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_docs(path: Path) -> list:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.load_all(f, Loader=UniqueKeyLoader) if d is not None]


def duration_seconds(text: str) -> float:
    """authgate durations as the config takes them: "30s", "5m", "1h", "250ms"."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------


def check_yaml_files(deploy: Path) -> dict[Path, list]:
    print("YAML: every file parses, no duplicate keys")
    docs: dict[Path, list] = {}
    for path in sorted(list(deploy.rglob("*.yaml")) + list(deploy.rglob("*.yml"))):
        rel = path.relative_to(deploy.parent)
        try:
            docs[path] = load_yaml_docs(path)
            check(True, f"{rel} ({len(docs[path])} document(s))")
        except yaml.YAMLError as e:
            check(False, f"{rel} parses", str(e).replace("\n", " "))
    return docs


def check_kubernetes(deploy: Path, docs: dict[Path, list]) -> None:
    kdir = deploy / "kubernetes"
    print("Kubernetes: the manifests agree with each other and with the config")
    kust = docs.get(kdir / "kustomization.yaml", [{}])[0]
    listed = kust.get("resources", [])
    on_disk = sorted(p.name for p in kdir.glob("*.yaml") if p.name != "kustomization.yaml")
    check(sorted(listed) == on_disk, "kustomization.yaml lists exactly the manifests in deploy/kubernetes/",
          f"listed {sorted(listed)}, on disk {on_disk}")

    objs: dict[tuple[str, str], dict] = {}
    for name in listed:
        for d in docs.get(kdir / name, []):
            objs[(d.get("kind"), d.get("metadata", {}).get("name"))] = d

    def one(kind: str) -> dict:
        found = [o for (k, _), o in objs.items() if k == kind]
        check(len(found) == 1, f"exactly one {kind}", f"found {len(found)}")
        return found[0] if found else {}

    dep, svc, cm, sec = one("Deployment"), one("Service"), one("ConfigMap"), one("Secret")
    pdb, hpa, netpol = one("PodDisruptionBudget"), one("HorizontalPodAutoscaler"), one("NetworkPolicy")
    if not dep:
        return
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    tmpl_labels = spec["template"]["metadata"].get("labels", {})
    containers = pod.get("containers", [])
    check(len(containers) == 1, "the pod has one container")
    c = containers[0]
    port_names = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

    def selects(sel: dict | None) -> bool:
        sel = sel or {}
        return bool(sel.get("matchLabels")) and all(tmpl_labels.get(k) == v for k, v in sel["matchLabels"].items())

    check(selects(spec.get("selector")), "Deployment selector matches its pod template labels")
    check(bool(svc.get("spec", {}).get("selector"))
          and all(tmpl_labels.get(k) == v for k, v in svc["spec"]["selector"].items()),
          "Service selector matches the pod labels")
    check(selects(pdb.get("spec", {}).get("selector")), "PodDisruptionBudget selector matches the pod labels")
    check(selects(netpol.get("spec", {}).get("podSelector")), "NetworkPolicy podSelector matches the pod labels")
    for t in pod.get("topologySpreadConstraints", []):
        check(selects(t.get("labelSelector")), f"topologySpreadConstraint on {t['topologyKey']} selects the pods")

    for p in svc.get("spec", {}).get("ports", []):
        tp = p.get("targetPort", p["port"])
        check(tp in port_names or tp in port_names.values(),
              f"Service port {p['name']} targets a container port ({tp})")
    for rule in netpol.get("spec", {}).get("ingress", []):
        for p in rule.get("ports", []):
            check(p["port"] in port_names or p["port"] in port_names.values(),
                  f"NetworkPolicy ingress port {p['port']} is a container port")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        h = c.get(probe, {}).get("httpGet", {})
        check(h.get("port") == "admin", f"{probe} uses the admin port", str(h))
    check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "readinessProbe is /readyz")
    check(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", "livenessProbe is /healthz")

    # Hardening that the README promises.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532, "pod runs as non-root uid 65532")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile is RuntimeDefault")
    check(csc.get("readOnlyRootFilesystem") is True, "container root filesystem is read-only")
    check(csc.get("allowPrivilegeEscalation") is False, "container cannot escalate privileges")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"] and not csc.get("capabilities", {}).get("add"),
          "container drops ALL capabilities and adds none")
    res = c.get("resources", {})
    check(all(k in res.get(t, {}) for t in ("requests", "limits") for k in ("cpu", "memory")),
          "container has cpu and memory requests and limits")
    check(pod.get("automountServiceAccountToken") is False, "no service account token is mounted")

    # Config and users: one folder, no subPath, files present.
    mounts = c.get("volumeMounts", [])
    check(all("subPath" not in m and "subPathExpr" not in m for m in mounts),
          "no volumeMount uses subPath (the Secret/ConfigMap symlink swap must reach the pod for live reload)")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    files_at: dict[str, str] = {}  # path in the container -> "configmap NAME KEY" / "secret NAME KEY"
    for m in mounts:
        v = vols.get(m["name"])
        if not check(v is not None, f"volumeMount {m['name']} has a volume"):
            continue
        check(m.get("readOnly") is True, f"volumeMount {m['name']} is read-only")
        sources = v.get("projected", {}).get("sources", [])
        if "configMap" in v:
            sources = sources + [{"configMap": v["configMap"]}]
        if "secret" in v:
            sources = sources + [{"secret": {**v["secret"], "name": v["secret"]["secretName"]}}]
        for s in sources:
            for kind, obj_kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
                if kind not in s:
                    continue
                src = s[kind]
                obj = objs.get((obj_kind, src["name"]))
                if not check(obj is not None, f"{obj_kind} {src['name']} (volume {m['name']}) is in the kustomization"):
                    continue
                data = {**obj.get("data", {}), **obj.get("stringData", {})}
                for item in src.get("items", [{"key": k, "path": k} for k in data]):
                    check(item["key"] in data, f"{obj_kind} {src['name']} has key {item['key']}")
                    files_at[f"{m['mountPath'].rstrip('/')}/{item['path']}"] = data.get(item["key"], "")

    args = c.get("command", []) + c.get("args", [])
    cfg_path = args[args.index("--config") + 1] if "--config" in args else None
    if not check(cfg_path in files_at, f"--config {cfg_path} is a mounted file", f"mounted: {sorted(files_at)}"):
        return
    cm_text = files_at[cfg_path]
    image_cfg = (deploy / "container" / "authgate.toml").read_text(encoding="utf-8")
    check(cm_text == image_cfg, "ConfigMap authgate.toml is identical to deploy/container/authgate.toml")
    try:
        cfg = tomllib.loads(cm_text)
        check(True, "ConfigMap authgate.toml is valid TOML")
    except tomllib.TOMLDecodeError as e:
        check(False, "ConfigMap authgate.toml is valid TOML", str(e))
        return
    users_file = cfg.get("auth", {}).get("users_file", "users.toml")
    users_path = users_file if users_file.startswith("/") else f"{cfg_path.rsplit('/', 1)[0]}/{users_file}"
    if check(users_path in files_at, f"users_file resolves to a mounted file ({users_path})"):
        try:
            users = tomllib.loads(files_at[users_path])
            check(bool(users.get("users")), "users.toml is valid TOML with at least one [users.NAME]")
            for name, u in users.get("users", {}).items():
                check(str(u.get("password", "")).startswith("$argon2id$"),
                      f"user {name}: password is an argon2id PHC string")
        except tomllib.TOMLDecodeError as e:
            check(False, "users.toml is valid TOML", str(e))
    admin = cfg.get("admin", {}).get("listen", "")
    check(admin.startswith("0.0.0.0:") or admin.startswith("[::]:"),
          "[admin] listen is on all pod addresses (kubelet and Prometheus reach it)", admin)
    check(admin and port_of(admin) == port_names.get("admin"),
          "[admin] listen port is the container port named admin", f"{admin} vs {port_names.get('admin')}")
    listens = [port_of(a) for a in cfg.get("server", {}).get("listen", [])]
    check(port_names.get("proxy") in listens, "[server] listen includes the container port named proxy",
          f"{listens} vs {port_names.get('proxy')}")
    check(cfg.get("log", {}).get("format") == "json", "[log] format is json")
    grace = duration_seconds(cfg.get("limits", {}).get("shutdown_grace", "30s"))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    tgp = pod.get("terminationGracePeriodSeconds", 30)
    # After the grace period, closing what is left takes up to 5 s, and a
    # stalled log up to 5 s more (README, "Shutdown").
    check(tgp >= grace + pre_stop + 10,
          f"terminationGracePeriodSeconds ({tgp}) >= preStop sleep ({pre_stop}) + shutdown_grace ({grace:g}) + 10")

    # Scaling objects agree.
    hspec = hpa.get("spec", {})
    check(hspec.get("scaleTargetRef", {}).get("name") == dep["metadata"]["name"]
          and hspec.get("scaleTargetRef", {}).get("kind") == "Deployment", "HPA targets the Deployment")
    check(hspec.get("minReplicas", 1) >= 2 and spec.get("replicas", 2) >= 2, "at least 2 replicas (Deployment and HPA)")
    check(pdb.get("spec", {}).get("minAvailable", 0) < hspec.get("minReplicas", 1),
          "PDB minAvailable < HPA minReplicas (a drain can always proceed)")
    metrics = hspec.get("metrics", [])
    check(any(m.get("resource", {}).get("name") == "cpu" for m in metrics), "HPA scales on CPU")
    check("cpu" in res.get("requests", {}), "CPU request set (HPA utilization is relative to it)")


def check_container(root: Path, deploy: Path, docs: dict[Path, list]) -> None:
    print("Container: Containerfile parses and matches the manifests")
    import dockerfile  # the BuildKit parser, via the `dockerfile` package

    path = deploy / "container" / "Containerfile"
    try:
        cmds = dockerfile.parse_file(str(path))
    except dockerfile.GoParseError as e:
        check(False, "Containerfile parses", str(e))
        return
    check(True, f"Containerfile parses ({len(cmds)} instructions)")
    known = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
             "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
    unknown = [f"{c.cmd} (line {c.start_line})" for c in cmds if c.cmd.upper() not in known]
    check(not unknown, "every instruction is a known one", ", ".join(unknown))
    froms = [c for c in cmds if c.cmd.upper() == "FROM"]
    check(len(froms) >= 2, "multi-stage build", f"{len(froms)} FROM")
    final = cmds[cmds.index(froms[-1]):] if froms else []
    by = lambda name: [c for c in final if c.cmd.upper() == name]  # noqa: E731
    users = by("USER")
    check(bool(users) and users[-1].value[0].split(":")[0] not in ("0", "root"),
          "final stage runs as a non-root USER", users[-1].value[0] if users else "no USER")
    exposed = {int(v.split("/")[0]) for c in by("EXPOSE") for v in c.value}
    check(exposed == {3128, 3129, 9090}, "EXPOSE 3128 3129 9090", str(sorted(exposed)))
    check(any("--locked" in c.value[0] and "cargo build" in c.value[0] for c in cmds if c.cmd.upper() == "RUN"),
          "cargo build --release --locked")
    entry = by("ENTRYPOINT")
    check(bool(entry) and entry[-1].json, "ENTRYPOINT in exec (JSON) form, so SIGTERM reaches authgate")
    dep = next((d for d in docs.get(deploy / "kubernetes" / "deployment.yaml", []) if d.get("kind") == "Deployment"), None)
    if entry and dep:
        command = dep["spec"]["template"]["spec"]["containers"][0].get("command", [])
        check(command[:1] == list(entry[-1].value[:1]),
              "Deployment command runs the binary the image installs", f"{command[:1]} vs {entry[-1].value[:1]}")
        ports = {p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0].get("ports", [])}
        check(ports == exposed, "Deployment container ports = EXPOSE", f"{sorted(ports)} vs {sorted(exposed)}")
    ignore = (root / ".dockerignore")
    lines = {l.strip() for l in ignore.read_text(encoding="utf-8").splitlines()} if ignore.exists() else set()
    check({"target/", ".git/"} <= lines, ".dockerignore excludes target/ and .git/")
    # A pattern without `**/` matches at the context root only.
    check({"**/*.pem", "**/*.key", "**/users.toml"} <= lines,
          ".dockerignore excludes keys, certificates and users files in every folder")
    try:
        tomllib.loads((deploy / "container" / "authgate.toml").read_text(encoding="utf-8"))
        check(True, "deploy/container/authgate.toml is valid TOML")
    except tomllib.TOMLDecodeError as e:
        check(False, "deploy/container/authgate.toml is valid TOML", str(e))


def check_systemd(deploy: Path) -> None:
    print("systemd: the unit keeps its promises")
    unit = (deploy / "systemd" / "authgate.service").read_text(encoding="utf-8")
    keys: dict[str, list[str]] = {}
    for line in unit.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    last = lambda k: keys.get(k, [None])[-1]  # noqa: E731
    check(last("User") not in (None, "root", "0") or last("DynamicUser") == "yes", "runs as an unprivileged user")
    check(last("CapabilityBoundingSet") == "", "CapabilityBoundingSet= is empty")
    check("/bin/kill -HUP $MAINPID" in keys.get("ExecReload", []), "ExecReload sends SIGHUP")
    for k, v in (("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                 ("PrivateDevices", "yes"), ("NoNewPrivileges", "yes"), ("MemoryDenyWriteExecute", "yes"),
                 ("SystemCallArchitectures", "native"), ("UMask", "0077"), ("Restart", "on-failure"),
                 ("KillSignal", "SIGTERM")):
        check(last(k) == v, f"{k}={v}", f"found {last(k)!r}")
    check("@system-service" in keys.get("SystemCallFilter", []), "SystemCallFilter=@system-service")
    cfg = tomllib.loads((deploy / "container" / "authgate.toml").read_text(encoding="utf-8"))
    grace = duration_seconds(cfg.get("limits", {}).get("shutdown_grace", "30s"))
    m = re.fullmatch(r"(\d+)\s*(s|sec|m|min|h)?", last("TimeoutStopSec") or "90")
    stop = int(m.group(1)) * {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)] if m else 0
    check(stop >= grace + 10, f"TimeoutStopSec ({stop:g}s) >= shutdown_grace ({grace:g}s) + 10")


def check_prometheus(deploy: Path, docs: dict[Path, list]) -> None:
    print("Prometheus: alerts and scrape config agree with the metrics and the pods")
    readme = (deploy / "README.md").read_text(encoding="utf-8") if (deploy / "README.md").exists() else ""
    documented = set(re.findall(r"`(authgate_[a-z0-9_]+)", readme))
    rules = docs.get(deploy / "prometheus" / "alerts.yml", [{}])[0]
    used: set[str] = set()
    alerts = []
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            # Raw metric names, not recording rules (job:authgate_requests:rate5m).
            used |= set(re.findall(r"(?<![\w:])(authgate_[a-z0-9_]+)\b(?!:)", r["expr"]))
            if "alert" in r:
                alerts.append(r)
    undocumented = sorted(m for m in used if m not in documented)
    check(not undocumented, "every metric the rules use is documented in deploy/README.md", ", ".join(undocumented))
    for r in alerts:
        a = r.get("annotations", {})
        check(r.get("labels", {}).get("severity") in ("critical", "warning", "info")
              and all(k in a for k in ("summary", "description", "runbook_url")),
              f"alert {r['alert']} has severity, summary, description, runbook_url")
        anchor = a.get("runbook_url", "").split("#")[-1]
        check(f"### {r['alert']}".lower() in readme.lower() and anchor == r["alert"].lower(),
              f"alert {r['alert']} has its runbook section in deploy/README.md")
    scrape = docs.get(deploy / "prometheus" / "scrape.yml", [{}])[0]
    k8s_jobs = [j for j in scrape.get("scrape_configs", []) if "kubernetes_sd_configs" in j]
    check(len(k8s_jobs) == 1, "one kubernetes_sd job")
    dep = next((d for d in docs.get(deploy / "kubernetes" / "deployment.yaml", []) if d.get("kind") == "Deployment"), {})
    labels = dep.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    for j in k8s_jobs:
        keeps = {tuple(r["source_labels"]): r["regex"] for r in j.get("relabel_configs", []) if r.get("action") == "keep"}
        name_re = keeps.get(("__meta_kubernetes_pod_label_app_kubernetes_io_name",))
        port_re = keeps.get(("__meta_kubernetes_pod_container_port_name",))
        check(name_re is not None and re.fullmatch(name_re, labels.get("app.kubernetes.io/name", "")) is not None,
              f"job {j['job_name']} keeps pods labelled app.kubernetes.io/name={labels.get('app.kubernetes.io/name')}")
        check(port_re is not None and re.fullmatch(port_re, "admin") is not None,
              f"job {j['job_name']} keeps the container port named admin")
    jobs = [j["job_name"] for j in scrape.get("scrape_configs", [])]
    check(all(re.fullmatch("authgate.*", n) for n in jobs), 'every scrape job matches the alerts\' job=~"authgate.*"',
          str(jobs))


def main() -> int:
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    deploy = root / "deploy"
    docs = check_yaml_files(deploy)
    check_kubernetes(deploy, docs)
    check_container(root, deploy, docs)
    check_systemd(deploy)
    check_prometheus(deploy, docs)
    if FAILURES:
        print(f"validate.py: {len(FAILURES)} check(s) failed")
    return min(len(FAILURES), 100)


if __name__ == "__main__":
    sys.exit(main())
