"""What istiod and istio-agent do with claimgate's manifests, done locally so the e2e tests
run the manifests users apply.

- `validate` checks a manifest against Istio's CRD schema (../shared/istio), the way the API
  server would: the OpenAPI schema (unknown fields are errors here, where the API server
  would silently prune them), plus the CEL rules that matter for these resources.
- `IstioAgent.fetch` downloads a WasmPlugin's module from its `url` and refuses it unless
  its SHA-256 equals `spec.sha256` (istio-agent's check before Envoy may load it).
- `extension_config` turns a WasmPlugin into the ECDS resource istiod sends: a
  TypedExtensionConfig named `<namespace>.<name>` holding the Wasm filter, with
  `pluginConfig` serialised to JSON inside a StringValue, and `failStrategy` mapped to
  `fail_open` or (FAIL_RELOAD) `failure_policy`.
- `http_filters` places plugins in the chain by phase and priority, each as an ECDS
  `config_discovery` entry (here from a watched file instead of istiod's ADS stream).
- `service_entry_clusters` builds the `outbound|PORT||HOST` clusters for ServiceEntries,
  with TLS origination from matching DestinationRules, as a sidecar in one namespace sees
  them (`exportTo`); `tls_origination` is that DestinationRule lookup alone (it applies to
  Kubernetes Services' clusters too).
"""

import copy
import functools
import hashlib
import json
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
# Istio's CRD schemas: $CLAIMGATE_SHARED/istio, by default shared/ beside the checkout.
CRD_DIR = Path(os.environ.get("CLAIMGATE_SHARED") or ROOT.parent / "shared") / "istio"
ROOT_NAMESPACE = "istio-system"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"

# Istio's order of phases in an HTTP filter chain (AUTHN plugins go first).
PHASE_ORDER = {"AUTHN": 0, "AUTHZ": 1, "STATS": 2, "UNSPECIFIED_PHASE": 3}

_CRD_FILES = {
    ("extensions.istio.io", "WasmPlugin"): "wasmplugins.crd.yaml",
    ("networking.istio.io", "ServiceEntry"): "serviceentries.crd.yaml",
    ("networking.istio.io", "DestinationRule"): "destinationrules.crd.yaml",
    ("security.istio.io", "RequestAuthentication"): "requestauthentications.crd.yaml",
    ("security.istio.io", "AuthorizationPolicy"): "authorizationpolicies.crd.yaml",
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def load(text):
    """The documents of a YAML stream, without empty ones."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _closed(schema):
    """The schema with unknown fields refused wherever Kubernetes would prune them."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for child in node.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties", "not"):
            walk(node.get(key))
        for key in ("oneOf", "anyOf", "allOf"):
            for child in node.get(key, []):
                walk(child)

    walk(schema)
    return schema


@functools.lru_cache(maxsize=None)
def crd_schema(api_version, kind):
    """The closed OpenAPI schema of a served CRD version, or None for kinds not in shared/."""
    group, _, version = api_version.rpartition("/")
    name = _CRD_FILES.get((group, kind))
    if name is None:
        return None
    crd = yaml.safe_load((CRD_DIR / name).read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version and v.get("served"):
            return _closed(v["schema"]["openAPIV3Schema"])
    raise ValueError(f"{kind}: version {version} is not served by {name}")


def validate(doc):
    """Every problem of one Istio manifest, as messages (empty when valid)."""
    problems = []
    kind = doc.get("kind")
    api_version = doc.get("apiVersion", "")
    schema = crd_schema(api_version, kind)
    if schema is None:
        return [f"{api_version} {kind} is not an Istio CRD known here"]
    meta = doc.get("metadata") or {}
    for field in ("name", "namespace"):
        if not _DNS_LABEL.match(str(meta.get(field, ""))):
            problems.append(f"metadata.{field} `{meta.get(field)}` is not a DNS label")
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft7Validator(schema)
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in error.path) or "(root)"
        problems.append(f"{where}: {error.message}")
    problems.extend(_cel_rules(kind, doc.get("spec") or {}))
    return problems


def _cel_rules(kind, spec):
    """The CRDs' `x-kubernetes-validations` rules for these kinds, by hand (no CEL here)."""
    out = []
    if kind == "WasmPlugin":
        scheme = urllib.parse.urlsplit(spec.get("url", "")).scheme
        if scheme not in ("", "http", "https", "oci", "file"):
            out.append("spec.url: url must have schema one of [http, https, file, oci]")
        if sum(1 for k in ("selector", "targetRef", "targetRefs") if k in spec) > 1:
            out.append("spec: only one of targetRefs or selector can be set")
        for key, value in ((spec.get("selector") or {}).get("matchLabels") or {}).items():
            if "*" in key or "*" in value or not key:
                out.append("spec.selector.matchLabels: no wildcards, no empty keys")
        for ref in spec.get("targetRefs") or []:
            if ref.get("namespace"):
                out.append("spec.targetRefs: cross namespace referencing is not currently supported")
    if kind == "ServiceEntry":
        numbers = [p.get("number") for p in spec.get("ports") or []]
        if len(numbers) != len(set(numbers)):
            out.append("spec.ports: port number cannot be duplicated")
        for port in spec.get("ports") or []:
            for key in ("number", "targetPort"):
                if key in port and not 0 < port[key] <= 65535:
                    out.append(f"spec.ports.{key}: port must be between 1-65535")
            if not re.match(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$", port.get("name", "")) or len(port.get("name", "")) >= 63:
                out.append("spec.ports.name: port name must be valid")
        if "*" in spec.get("hosts", []):
            out.append("spec.hosts: hostname cannot be wildcard")
        if spec.get("workloadSelector") and spec.get("endpoints"):
            out.append("spec: only one of WorkloadSelector or Endpoints can be set")
        if spec.get("resolution", "NONE") == "NONE" and spec.get("endpoints"):
            out.append("spec: NONE mode cannot set endpoints")
    return out


class IstioAgent:
    """Fetches and verifies Wasm modules the way istio-agent does before Envoy loads them."""

    def __init__(self, cache_dir):
        self.cache = Path(cache_dir)
        self.cache.mkdir(parents=True, exist_ok=True)

    def fetch(self, plugin):
        spec = plugin["spec"]
        url = spec["url"]
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme in ("http", "https"):
            with urllib.request.urlopen(url, timeout=30) as r:
                module = r.read()
        elif scheme == "file":
            module = Path(urllib.parse.urlsplit(url).path).read_bytes()
        else:
            raise ValueError(f"this local agent fetches http(s) and file URLs, not {scheme}://")
        digest = hashlib.sha256(module).hexdigest()
        if spec.get("sha256") and digest != spec["sha256"]:
            raise ValueError(f"module checksum mismatch: got {digest}, want {spec['sha256']}")
        path = self.cache / f"{digest}.wasm"
        path.write_bytes(module)
        return path


def applies_to(plugin, workload):
    """istiod's selection: the plugin's namespace (or the root namespace), its selector, and
    its traffic match (inbound = SERVER) against one workload's inbound listener."""
    meta, spec = plugin["metadata"], plugin["spec"]
    if meta["namespace"] not in (workload["namespace"], ROOT_NAMESPACE):
        return False
    labels = ((spec.get("selector") or {}).get("matchLabels")) or {}
    if any(workload["labels"].get(k) != v for k, v in labels.items()):
        return False
    if spec.get("targetRefs"):
        # Service targets select the workloads behind the Service.
        services = {r["name"] for r in spec["targetRefs"] if r["kind"] == "Service"}
        if workload.get("service") not in services:
            return False
    matches = spec.get("match") or [{"mode": "CLIENT_AND_SERVER"}]
    for m in matches:
        if m.get("mode", "CLIENT_AND_SERVER") not in ("SERVER", "CLIENT_AND_SERVER"):
            continue
        ports = [p["number"] for p in m.get("ports") or []]
        if not ports or workload["port"] in ports:
            return True
    return False


def resource_name(plugin):
    return f"{plugin['metadata']['namespace']}.{plugin['metadata']['name']}"


def extension_config(plugin, module_path, runtime="envoy.wasm.runtime.v8"):
    """The TypedExtensionConfig istiod sends over ECDS for one WasmPlugin."""
    spec = plugin["spec"]
    name = resource_name(plugin)
    config = {
        "name": name,
        "root_id": spec.get("pluginName", ""),
        "vm_config": {"runtime": runtime, "code": {"local": {"filename": str(module_path)}}},
    }
    # istiod: FAIL_OPEN → fail_open; FAIL_RELOAD (Istio ≥ 1.27) → failure_policy FAIL_RELOAD.
    strategy = spec.get("failStrategy", "FAIL_CLOSE")
    if strategy == "FAIL_RELOAD":
        config["failure_policy"] = "FAIL_RELOAD"
    else:
        config["fail_open"] = strategy == "FAIL_OPEN"
    if "pluginConfig" in spec:
        # istiod marshals the Struct to JSON and wraps it in a StringValue.
        config["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": json.dumps(spec["pluginConfig"], separators=(",", ":")),
        }
    return {"name": name, "typed_config": {"@type": WASM_TYPE, "config": config}}


def http_filters(plugins, ecds_path):
    """The HTTP filter chain: plugins ordered by phase, then priority (higher first), each
    fetched over ECDS from `ecds_path` (the router goes after them)."""
    ordered = sorted(plugins, key=lambda p: (PHASE_ORDER[p["spec"].get("phase", "UNSPECIFIED_PHASE")], -p["spec"].get("priority", 0)))
    chain = []
    for plugin in ordered:
        chain.append(
            {
                "name": resource_name(plugin),
                "config_discovery": {
                    "config_source": {
                        "resource_api_version": "V3",
                        "path_config_source": {"path": str(ecds_path), "watched_directory": {"path": str(Path(ecds_path).parent)}},
                    },
                    "type_urls": [WASM_TYPE],
                },
            }
        )
    return chain


def write_ecds(ecds_path, extension_configs, version):
    """Publishes a DiscoveryResponse atomically (write aside, then rename into the watched
    directory), the file-based stand-in for an istiod push."""
    response = {
        "version_info": str(version),
        "type_url": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "resources": [dict(c, **{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"}) for c in extension_configs],
    }
    ecds_path = Path(ecds_path)
    aside = ecds_path.parent.parent / f".{ecds_path.name}.{version}.tmp"
    aside.write_text(json.dumps(response))
    os.replace(aside, ecds_path)


def visible_in(doc, namespace):
    """Whether a ServiceEntry/DestinationRule reaches the proxies of `namespace`
    (`exportTo`: absent or `*` = every namespace, `.` = its own, or names)."""
    export_to = doc["spec"].get("exportTo") or ["*"]
    own = doc["metadata"]["namespace"]
    return "*" in export_to or namespace in export_to or ("." in export_to and namespace == own)


def tls_origination(docs, host, port, namespace):
    """The `tls` a sidecar in `namespace` applies to `host:port` from the DestinationRules it
    sees (port-level settings), or None."""
    for doc in docs:
        if doc["kind"] == "DestinationRule" and doc["spec"]["host"] == host and visible_in(doc, namespace):
            for setting in (doc["spec"].get("trafficPolicy") or {}).get("portLevelSettings") or []:
                if setting["port"]["number"] == port:
                    return setting.get("tls") or {}
    return None


def service_entry_clusters(docs, namespace):
    """`outbound|PORT||HOST` clusters for the ServiceEntries a sidecar in `namespace` sees,
    TLS per the DestinationRules it sees."""
    clusters = []
    for doc in docs:
        if doc["kind"] != "ServiceEntry" or not visible_in(doc, namespace):
            continue
        spec = doc["spec"]
        for host in spec["hosts"]:
            for port in spec["ports"]:
                name = f"outbound|{port['number']}||{host}"
                cluster = {
                    "name": name,
                    "connect_timeout": "2s",
                    "type": "STRICT_DNS" if spec.get("resolution") == "DNS" else "STATIC",
                    "dns_lookup_family": "V4_ONLY",
                    "load_assignment": {
                        "cluster_name": name,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port.get("targetPort", port["number"])}}}}
                                ]
                            }
                        ],
                    },
                }
                tls = tls_origination(docs, host, port["number"], namespace)
                if tls and tls.get("mode") == "SIMPLE":
                    cluster["transport_socket"] = {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                            "sni": tls.get("sni", host),
                        },
                    }
                clusters.append(cluster)
    return clusters
