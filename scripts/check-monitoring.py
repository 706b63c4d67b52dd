"""Checks deploy/monitoring beyond what promtool and the Kubernetes schemas see.

Usage: check-monitoring.py OUT_DIR RENDERED_OVERLAY RENDERED_MONITORING RENDERED_COLLECTOR

Writes into OUT_DIR, for scripts/check-deploy to hand to promtool and
kubernetes-validate:
  <name>.rules.yaml          the spec of each PrometheusRule in deploy/monitoring
  tests/<name>.test.yaml     the rule cases, whose `../<name>.rules.yaml` now resolve
  dashboard.rules.yaml       every dashboard query as a recording rule, so that
                             `promtool check rules` parses each one
  standard-kinds.yaml        the rendered resources Kubernetes itself defines

and checks, failing with a message naming the file and the fault:
  - every metric the rules and the dashboard read is one the services export (the
    catalogue in crates/server/src/metrics.rs, or the process_* families);
  - the dashboard's panels have unique ids and every query a datasource;
  - the PodMonitor selects the pods of the rendered overlay and names a port they have;
  - the collector's pipelines name only components it defines, its OTLP ports are the
    ones its Service and the NetworkPolicy carry, and every ${env:X} it reads is set.

Needs PyYAML (the deploy venv has it, as a dependency of checkov).
"""

import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
CATALOGUE = ROOT / "crates" / "server" / "src" / "metrics.rs"
# What metrics-process exports (crates/server/src/metrics.rs, `render`).
PROCESS_FAMILIES = {
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
    "process_virtual_memory_max_bytes",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
# Grafana's variables, as a query would see them.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$namespace": "cascade",
}

faults = []


def fault(where, message):
    faults.append(f"{where}: {message}")


def documents(path):
    return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]


def exported_families():
    text = CATALOGUE.read_text()
    start = text.index("pub const FAMILIES")
    end = text.index("];", start)
    return set(re.findall(r'"(cascade_[a-z0-9_]+)"', text[start:end])) | PROCESS_FAMILIES


def metric_names(expr):
    """The metric names an expression reads: label sets, grouping clauses and strings
    taken out first, so that label names (`cascade_service`) are not mistaken for one."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )
    return set(re.findall(r"\b((?:cascade|process)_[a-z0-9_]+)\b", expr))


def check_names(where, expr, families):
    for name in metric_names(expr):
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in families:
                base = name[: -len(suffix)]
        if base not in families:
            fault(where, f"reads {name}, which no service exports")


def rules(out, families):
    for path in sorted(MONITORING.glob("*.rules.yaml")):
        (rule,) = documents(path)
        if rule.get("apiVersion") != "monitoring.coreos.com/v1" or rule.get("kind") != "PrometheusRule":
            fault(path.name, "is not a monitoring.coreos.com/v1 PrometheusRule")
            continue
        spec = rule["spec"]
        for group in spec["groups"]:
            for r in group["rules"]:
                check_names(f"{path.name} {r.get('alert') or r.get('record')}", r["expr"], families)
        (out / path.name).write_text(yaml.safe_dump(spec, sort_keys=False))
    (out / "tests").mkdir(exist_ok=True)
    for path in sorted((MONITORING / "tests").glob("*.test.yaml")):
        (out / "tests" / path.name).write_text(path.read_text())


def dashboard_queries(dashboard):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            yield {"id": "annotation", "title": annotation["name"]}, annotation


def dashboards(out, families):
    recorded = []
    for path in sorted((MONITORING / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        ids = [p["id"] for p in dashboard["panels"]]
        if len(ids) != len(set(ids)):
            fault(path.name, "panel ids repeat")
        for number, (panel, target) in enumerate(dashboard_queries(dashboard)):
            where = f"{path.name} panel {panel['id']} ({panel['title']})"
            if "datasource" not in target:
                fault(where, "a query without a datasource")
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            if "$" in expr:
                fault(where, f"an unknown variable in {expr}")
            check_names(where, expr, families)
            recorded.append({"record": f"dashboard:{path.stem}:query_{number}", "expr": expr})
    (out / "dashboard.rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": recorded}]})
    )


def pod_monitor(overlay, monitoring):
    monitors = [d for d in monitoring if d["kind"] == "PodMonitor"]
    pods = [
        d["spec"]["template"]
        for d in overlay
        if d["kind"] == "Deployment" and d["metadata"]["labels"].get("app.kubernetes.io/part-of") == "cascade"
    ]
    if not monitors:
        fault("deploy/monitoring", "no PodMonitor")
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [
            p for p in pods if all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())
        ]
        if len(selected) != 4:
            fault("pod-monitor.yaml", f"selects {len(selected)} of the four services' pods")
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for pod in selected:
                ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
                if endpoint["port"] not in ports:
                    fault("pod-monitor.yaml", f"port {endpoint['port']} is not a port of the pods")


def collector(rendered, overlay):
    config_maps = [d for d in rendered if d["kind"] == "ConfigMap"]
    config = yaml.safe_load(config_maps[0]["data"]["collector.yaml"])
    for pipeline, parts in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for name in parts.get(kind, []):
                if name not in config.get(kind, {}):
                    fault("collector.yaml", f"pipeline {pipeline} names {kind[:-1]} {name}, not defined")
    for name in config["service"].get("extensions", []):
        if name not in config.get("extensions", {}):
            fault("collector.yaml", f"extension {name} is not defined")
    endpoints = config["receivers"]["otlp"]["protocols"]
    otlp_ports = {int(p["endpoint"].rsplit(":", 1)[1]) for p in endpoints.values()}
    (service,) = [d for d in rendered if d["kind"] == "Service"]
    if {p["port"] for p in service["spec"]["ports"]} != otlp_ports:
        fault("collector-deployment.yaml", f"the Service's ports are not the receiver's {sorted(otlp_ports)}")
    (policy,) = [d for d in overlay if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "otel-egress"]
    allowed = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    if allowed != otlp_ports:
        fault("network-policies.yaml", f"otel-egress allows {sorted(allowed)}, the collector listens on {sorted(otlp_ports)}")
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    env = {e["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    raw = config_maps[0]["data"]["collector.yaml"]
    for variable in re.findall(r"\$\{env:([A-Z0-9_]+)\}", raw):
        if variable not in env:
            fault("collector.yaml", f"reads ${{env:{variable}}}, which the Deployment does not set")


def main():
    out, overlay_path, monitoring_path, collector_path = map(pathlib.Path, sys.argv[1:5])
    overlay = documents(overlay_path)
    monitoring = documents(monitoring_path)
    rendered_collector = documents(collector_path)
    families = exported_families()
    rules(out, families)
    dashboards(out, families)
    pod_monitor(overlay, monitoring)
    collector(rendered_collector, overlay)
    standard = [d for d in monitoring + rendered_collector if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    (out / "standard-kinds.yaml").write_text(yaml.safe_dump_all(standard, sort_keys=False))
    if faults:
        for line in faults:
            print(f"check-monitoring: {line}", file=sys.stderr)
        sys.exit(1)
    print(f"check-monitoring: {len(families)} families exported; every rule and dashboard query reads one of them")


if __name__ == "__main__":
    main()
