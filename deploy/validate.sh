#!/usr/bin/env bash
# deploy/validate.sh: offline validation of everything in deploy/.
#
#   bash deploy/validate.sh            # from anywhere; exits non-zero on any failure
#
# Checks (each prints a line; see deploy/README.md, "Validation"):
#   1. YAML: every deploy/**/*.y*ml parses, without duplicate keys;
#      consistency of the manifests, config, Containerfile, unit and alerts
#      (deploy/validate.py).
#   2. Kubernetes: every manifest, and the `kubectl kustomize` output when
#      kubectl is present, against the Kubernetes JSON schemas of the oldest
#      and newest supported versions, strict (unknown fields are errors), with
#      the network cut off when `unshare -n` works (proof that it is offline).
#   3. Prometheus: promtool check rules, promtool test rules (alert unit tests),
#      promtool check rules on the PromQL lines of deploy/README.md, promtool
#      check config on a prometheus.yml made of scrape.yml + alerts.yml.
#   4. systemd: systemd-analyze verify on the unit (ExecStart pointed at a stub:
#      the real binary need not be installed) and systemd-analyze security with
#      a maximum exposure; systemd-sysusers --dry-run on the sysusers entry.
#   5. authgate check on the container/Kubernetes config, if a built authgate
#      binary is found (a warning only: the config may use keys the binary in
#      target/ does not know yet).
#
# Installs what it lacks (it runs as root on a fresh Debian 12 in CI): Python
# packages from deploy/requirements-validate.txt into a venv, promtool from
# Debian's `prometheus` package (extracted, so no Prometheus server is
# installed or started), systemd if systemd-analyze is missing. Downloads are
# cached in $AUTHGATE_VALIDATE_CACHE (default ~/.cache/authgate-validate), so a
# second run needs no network. Idempotent; it writes nothing in the repository.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${AUTHGATE_VALIDATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/authgate-validate}
# Oldest supported (the preStop sleep action is on by default from 1.30) and
# the newest that kubernetes-validate carries.
k8s_versions=${AUTHGATE_K8S_VERSIONS:-"1.30.0 1.37.0"}
# systemd-analyze security exposure (0.0 best .. 10.0 worst) the unit must stay under.
max_exposure=${AUTHGATE_MAX_EXPOSURE:-2.0}

started=$SECONDS
failed=()
skipped=()
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

section() { printf '\n== %s\n' "$*"; }
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; failed+=("$*"); }
skip() { printf '  skip  %s\n' "$*"; skipped+=("$*"); }
# run DESCRIPTION CMD...: ok if CMD exits 0, else FAIL with its output.
run() {
    local what=$1; shift
    if "$@" >"$tmp/out" 2>&1; then
        pass "$what"
    else
        fail "$what"
        sed 's/^/        /' "$tmp/out"
    fi
}
is_root() { [ "$(id -u)" -eq 0 ]; }
apt_updated=
apt_install() {
    is_root || { echo "need root to apt-get install $*" >&2; return 1; }
    if [ -z "$apt_updated" ]; then apt-get update -qq >/dev/null; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------------------
section "tools"
mkdir -p "$cache"

# Python venv with kubernetes-validate (it bundles the schemas), PyYAML, dockerfile.
venv=$cache/venv
req=$here/requirements-validate.txt
if ! command -v python3 >/dev/null; then apt_install python3 python3-venv; fi
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements-validate.txt"; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian's python3 needs python3-venv for ensurepip.
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    if ! "$venv/bin/python" -c 'import tomllib' 2>/dev/null; then
        "$venv/bin/python" -m pip install -q --disable-pip-version-check 'tomli>=2'
    fi
    cp "$req" "$venv/requirements-validate.txt"
fi
echo "  python       $("$venv/bin/python" --version 2>&1), kubernetes-validate $("$venv/bin/kubernetes-validate" --version)"

# promtool: on PATH, or extracted from Debian's prometheus package into the cache.
promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
    promtool=$cache/prometheus/usr/bin/promtool
    if [ ! -x "$promtool" ]; then
        (
            cd "$tmp"
            if ! apt-get download prometheus >/dev/null 2>&1; then
                apt-get update -qq >/dev/null
                apt-get download prometheus >/dev/null 2>&1
            fi
            rm -rf "$cache/prometheus"
            dpkg-deb -x prometheus_*.deb "$cache/prometheus"
        )
    fi
fi
echo "  promtool     $("$promtool" --version 2>&1 | head -n1)"

if ! command -v systemd-analyze >/dev/null && is_root; then
    apt_install systemd || true
fi
if command -v systemd-analyze >/dev/null; then
    echo "  systemd      $(systemd-analyze --version | head -n1)"
fi
if command -v kubectl >/dev/null; then
    echo "  kubectl      $(kubectl version --client 2>/dev/null | head -n1)"
fi
tools_done=$SECONDS

# ---------------------------------------------------------------------------
section "YAML and cross-file consistency (deploy/validate.py)"
if "$venv/bin/python" "$here/validate.py" "$root" >"$tmp/py" 2>&1; then
    cat "$tmp/py"
    pass "deploy/validate.py: all $(grep -c '^  ok' "$tmp/py") checks passed"
else
    cat "$tmp/py"
    fail "deploy/validate.py: $(grep -c '^  FAIL' "$tmp/py") check(s) failed"
fi

# ---------------------------------------------------------------------------
section "Kubernetes schemas (kubernetes-validate --strict, offline)"
kdir=$here/kubernetes
manifests=()
while IFS= read -r f; do manifests+=("$kdir/$f"); done < <(
    "$venv/bin/python" -c '
import sys, yaml
for r in yaml.safe_load(open(sys.argv[1]))["resources"]:
    print(r)' "$kdir/kustomization.yaml")
if command -v kubectl >/dev/null; then
    if kubectl kustomize "$kdir" >"$tmp/rendered.yaml" 2>"$tmp/kerr"; then
        pass "kubectl kustomize deploy/kubernetes renders ($(grep -c '^kind:' "$tmp/rendered.yaml") objects)"
        manifests+=("$tmp/rendered.yaml")
    else
        fail "kubectl kustomize deploy/kubernetes"
        sed 's/^/        /' "$tmp/kerr"
    fi
else
    skip "kubectl kustomize: kubectl is not installed (Debian 12 does not package it); the listed resources are validated one by one"
fi
# No network for the schema check when a network namespace can be made: the
# schemas must come from the package, not from the internet.
offline=()
if unshare -n true 2>/dev/null; then offline=(unshare -n); fi
for v in $k8s_versions; do
    if "${offline[@]}" "$venv/bin/kubernetes-validate" --strict -k "$v" "${manifests[@]}" >"$tmp/kv" 2>&1 \
        && ! grep -q '^ERROR\|^WARN' "$tmp/kv"; then
        pass "Kubernetes $v: $(grep -c 'passed' "$tmp/kv") objects valid${offline:+ (network namespace without network)}"
    else
        fail "Kubernetes $v schema validation"
        grep -v '^INFO' "$tmp/kv" | sed "s#$tmp/##; s#$root/##; s/^/        /"
    fi
done

# ---------------------------------------------------------------------------
section "Prometheus (promtool)"
pdir=$here/prometheus
run "promtool check rules deploy/prometheus/alerts.yml" "$promtool" check rules "$pdir/alerts.yml"
run "promtool test rules deploy/prometheus/alerts_test.yml (alert unit tests)" \
    "$promtool" test rules "$pdir/alerts_test.yml"
# The PromQL that deploy/README.md gives to paste: each line of its ```promql
# blocks (without its `# comment`) as a recording rule.
"$venv/bin/python" - "$here/README.md" "$tmp/readme-promql.yml" <<'PY'
import re, sys, yaml
text = open(sys.argv[1], encoding="utf-8").read()
exprs = [re.sub(r"\s+#.*$", "", line).strip()
         for block in re.findall(r"```promql\n(.*?)```", text, re.S) for line in block.splitlines()]
rules = [{"record": f"readme:line{i}", "expr": e} for i, e in enumerate(x for x in exprs if x)]
yaml.safe_dump({"groups": [{"name": "readme", "rules": rules}]}, open(sys.argv[2], "w"), sort_keys=False)
PY
run "promtool check rules: the PromQL lines of deploy/README.md" "$promtool" check rules "$tmp/readme-promql.yml"
# A prometheus.yml as an operator would write it: scrape.yml's jobs + alerts.yml.
"$venv/bin/python" - "$pdir" "$tmp" <<'PY'
import sys, yaml
pdir, tmp = sys.argv[1], sys.argv[2]
scrape = yaml.safe_load(open(f"{pdir}/scrape.yml"))
cfg = {"global": {"scrape_interval": "30s", "evaluation_interval": "1m"},
       "rule_files": [f"{pdir}/alerts.yml"], "scrape_configs": scrape["scrape_configs"]}
yaml.safe_dump(cfg, open(f"{tmp}/prometheus.yml", "w"), sort_keys=False)
# The same with Kubernetes discovery swapped for a static target, for a
# promtool built without Kubernetes discovery (Debian's): everything else in
# the job (relabelling, intervals, paths) is still checked.
for job in cfg["scrape_configs"]:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["10.0.0.1:9090"]}]
yaml.safe_dump(cfg, open(f"{tmp}/prometheus-static.yml", "w"), sort_keys=False)
PY
if "$promtool" check config "$tmp/prometheus.yml" >"$tmp/out" 2>&1; then
    pass "promtool check config: prometheus.yml = scrape.yml + alerts.yml"
elif grep -q 'field kubernetes_sd_configs not found' "$tmp/out"; then
    run "promtool check config: prometheus.yml = scrape.yml (kubernetes_sd_configs swapped for static_configs) + alerts.yml" \
        "$promtool" check config "$tmp/prometheus-static.yml"
    skip "kubernetes_sd_configs block itself: this promtool is built without Kubernetes discovery (Debian strips it)"
else
    fail "promtool check config: prometheus.yml = scrape.yml + alerts.yml"
    sed 's/^/        /' "$tmp/out"
fi

# ---------------------------------------------------------------------------
section "systemd"
unit=$here/systemd/authgate.service
if ! command -v systemd-analyze >/dev/null; then
    skip "systemd-analyze verify/security: systemd-analyze is not installed and could not be installed (not root?)"
else
    # Probe: can verify run here at all (no systemd as PID 1 in a container)?
    printf '[Service]\nType=oneshot\nExecStart=/bin/true\n' >"$tmp/probe.service"
    if ! systemd-analyze verify --man=no "$tmp/probe.service" >"$tmp/probe" 2>&1; then
        skip "systemd-analyze verify: cannot verify even a trivial unit here: $(head -n1 "$tmp/probe")"
    else
        # Same unit, with the authgate path pointed at a stub so that verify's
        # "is the command executable" check does not need authgate installed.
        mkdir -p "$tmp/unit"
        printf '#!/bin/sh\nexit 0\n' >"$tmp/unit/authgate"
        chmod 0755 "$tmp/unit/authgate"
        sed "s#/usr/local/bin/authgate#$tmp/unit/authgate#g" "$unit" >"$tmp/unit/authgate.service"
        # verify exits 0 on some warnings: any output is a failure too.
        if systemd-analyze verify --man=no "$tmp/unit/authgate.service" >"$tmp/out" 2>&1 && [ ! -s "$tmp/out" ]; then
            pass "systemd-analyze verify deploy/systemd/authgate.service"
        else
            fail "systemd-analyze verify deploy/systemd/authgate.service"
            sed "s#$tmp/unit/##g; s/^/        /" "$tmp/out"
        fi
    fi
    if systemd-analyze security --offline=yes "$unit" >"$tmp/sec" 2>&1; then
        score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$tmp/sec")
        if [ -n "$score" ] && awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
            pass "systemd-analyze security --offline=yes: exposure $score (max $max_exposure)"
        else
            fail "systemd-analyze security: exposure ${score:-unknown} > $max_exposure"
            grep '✗' "$tmp/sec" | sed 's/^/        /'
        fi
    else
        skip "systemd-analyze security --offline=yes: $(head -n1 "$tmp/sec")"
    fi
    if command -v systemd-sysusers >/dev/null; then
        run "systemd-sysusers --dry-run deploy/systemd/authgate.sysusers" \
            systemd-sysusers --dry-run "$here/systemd/authgate.sysusers"
    fi
fi

# ---------------------------------------------------------------------------
section "authgate check (the binary against the deployment config)"
bin=${AUTHGATE_BIN:-}
for b in "$root/target/release/authgate" "$root/target/debug/authgate"; do
    [ -z "$bin" ] && [ -x "$b" ] && bin=$b
done
if [ -z "$bin" ]; then
    skip "authgate check: no built binary (cargo build first, or set AUTHGATE_BIN)"
else
    mkdir -p "$tmp/etc"
    cp "$here/container/authgate.toml" "$tmp/etc/authgate.toml"
    "$venv/bin/python" -c '
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
sys.stdout.write(d["stringData"]["users.toml"])' "$kdir/secret.yaml" >"$tmp/etc/users.toml"
    if "$bin" check --config "$tmp/etc/authgate.toml" >"$tmp/out" 2>&1; then
        pass "${bin#"$root"/} check: deploy/container/authgate.toml + the Secret's users.toml"
    else
        # Not a failure: deploy/ may already use keys ([admin], ...) that this
        # build does not know yet.
        skip "${bin#"$root"/} check rejects the deployment config (warning only):"
        sed "s#$tmp/etc/##g; s/^/        /" "$tmp/out"
    fi
fi

# ---------------------------------------------------------------------------
section "summary"
echo "  not checked: the container image is not built (no container engine or"
echo "  base images offline); manifests are not applied to a cluster."
printf '  %d failed, %d skipped; tools %ds, checks %ds\n' \
    "${#failed[@]}" "${#skipped[@]}" "$tools_done" "$((SECONDS - tools_done))"
if [ "${#failed[@]}" -gt 0 ]; then
    printf '  FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "  deploy/ is valid"
