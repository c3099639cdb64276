"""What Istio does with claimgate's telemetry manifests, done locally so the e2e tests run the
manifests users apply (the counterpart of mesh.py for manifests/telemetry*.yaml).

- `validate` checks the Telemetry against Istio's Telemetry CRD schema (e2e/istio: not among
  ../shared/istio's CRDs), and the IstioOperator overlay's `meshConfig` against the MeshConfig
  fields it uses (names and shapes from istio/api `mesh/v1alpha1/config.proto` and
  `proxy.proto`), unknown fields refused.
- `access_log` turns the overlay's `envoyFileAccessLog` provider into the Envoy access log
  istiod configures for a workload a Telemetry enables it on (JSON `labels` → `json_format`,
  `text` → a line with a newline added), writing to a file of the test's choosing.
- `stats_config` is the bootstrap `stats_config` istio-agent renders (Istio's
  tools/packaging/common/envoy_bootstrap.json and pkg/bootstrap/config.go): Istio's tag
  regexes, one `(<tag>=\\.=(.*?);\\.;)` regex per `extraStatTags` entry, and the inclusion
  list Istio keeps by default (plus `proxyStatsMatcher`).
"""

import copy
import json

import jsonschema
import yaml

import mesh

ROOT = mesh.ROOT
TELEMETRY_CRD = ROOT / "e2e" / "istio" / "telemetries.crd.yaml"
TELEMETRY = ROOT / "manifests" / "telemetry.yaml"
MESH_CONFIG = ROOT / "manifests" / "telemetry-meshconfig.yaml"
GROUPS = ("telemetry.istio.io", "install.istio.io")

_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}

# The part of MeshConfig the overlay may use, closed (config.proto: `extension_providers`,
# `ExtensionProvider.envoy_file_access_log`, `EnvoyFileAccessLogProvider{path, log_format{text |
# labels}, omit_empty_values}`; proxy.proto: `ProxyConfig.extra_stat_tags`,
# `proxy_stats_matcher{inclusion_prefixes, inclusion_suffixes, inclusion_regexps}`).
MESH_CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "defaultConfig": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "extraStatTags": _STRINGS,
                "proxyStatsMatcher": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"inclusionPrefixes": _STRINGS, "inclusionSuffixes": _STRINGS, "inclusionRegexps": _STRINGS},
                },
            },
        },
        "extensionProviders": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "envoyFileAccessLog"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "envoyFileAccessLog": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "path": {"type": "string"},
                            "omitEmptyValues": {"type": "boolean"},
                            "logFormat": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"text": {"type": "string"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}}},
                                "minProperties": 1,
                                "maxProperties": 1,
                            },
                        },
                    },
                },
            },
        },
    },
}

# Istio's bootstrap tag regexes (before and after the extra tags), in its order.
_ISTIO_TAGS_BEFORE = [
    ("cluster_name", r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"),
    ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("response_code", r"_rq(_(\d{3}))$"),
    ("response_code_class", r"_rq(_(\dxx))$"),
    ("http_conn_manager_listener_prefix", r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("http_conn_manager_prefix", r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("listener_address", r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("mongo_prefix", r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"),
]
_ISTIO_TAGS_AFTER = [
    ("cache", r"(cache\.(.+?)\.)"),
    ("component", r"(component\.(.+?)\.)"),
    ("tag", r"(tag\.(.+?);\.)"),
    ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
    ("authz_enforce_result", r"rbac(\.(allowed|denied))"),
    ("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
    ("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
]
# What Istio keeps whatever the proxy config says (pkg/bootstrap/config.go and the template).
_ISTIO_PREFIXES = ["reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm"]
_ISTIO_SUFFIXES = ["rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied", "downstream_cx_active"]
_ISTIO_REGEXES = [r"vhost\..*\.route\..*"]


def load(path):
    return mesh.load(path.read_text())


def overlay():
    """The IstioOperator overlay's meshConfig."""
    (doc,) = load(MESH_CONFIG)
    return doc["spec"]["meshConfig"]


def telemetry():
    (doc,) = load(TELEMETRY)
    return doc


def validate(doc):
    """Every problem of a Telemetry or of the IstioOperator overlay (empty when valid)."""
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    problems = []
    for field in ("name", "namespace"):
        if not mesh._DNS_LABEL.match(str(meta.get(field, ""))):
            problems.append(f"metadata.{field} `{meta.get(field)}` is not a DNS label")
    if kind == "Telemetry":
        schema = _telemetry_schema(doc.get("apiVersion", "").rpartition("/")[2])
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    elif kind == "IstioOperator" and doc.get("apiVersion") == "install.istio.io/v1alpha1":
        schema = {"type": "object", "additionalProperties": False, "required": ["meshConfig"], "properties": {"meshConfig": MESH_CONFIG_SCHEMA}}
        body = doc.get("spec")
    else:
        return [f"{doc.get('apiVersion')} {kind} is not a telemetry resource known here"]
    for error in sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path)):
        problems.append(f"{'.'.join(str(p) for p in error.path) or '(root)'}: {error.message}")
    return problems


def _telemetry_schema(version):
    crd = yaml.safe_load(TELEMETRY_CRD.read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version and v.get("served"):
            return mesh._closed(v["schema"]["openAPIV3Schema"])
    raise ValueError(f"Telemetry: version {version} is not served")


def provider(mesh_config, name):
    """The extension provider `name` of a meshConfig."""
    found = [p for p in mesh_config.get("extensionProviders", []) if p["name"] == name]
    assert len(found) == 1, f"no single extension provider `{name}`"
    return found[0]


def access_log(mesh_config, name, path):
    """The Envoy access log istiod builds from provider `name`, writing to `path`."""
    spec = provider(mesh_config, name)["envoyFileAccessLog"]
    log_format = spec.get("logFormat") or {"labels": {}}
    if "labels" in log_format:
        fmt = {"json_format": copy.deepcopy(log_format["labels"])}
    else:
        text = log_format["text"]
        fmt = {"text_format_source": {"inline_string": text if text.endswith("\n") else text + "\n"}}
    if spec.get("omitEmptyValues"):
        fmt["omit_empty_values"] = True
    # istiod adds the formatter extension the command operator needs.
    if "%REQ_WITHOUT_QUERY(" in json.dumps(log_format):
        fmt["formatters"] = [
            {"name": "envoy.formatter.req_without_query", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"}}
        ]
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": str(path), "log_format": fmt},
    }


def stats_config(mesh_config, istio_defaults_only=False):
    """The bootstrap stats_config istio-agent renders for a proxy with this mesh config's
    `defaultConfig` (or with none: `istio_defaults_only`)."""
    proxy = {} if istio_defaults_only else mesh_config.get("defaultConfig", {})
    extra = [(tag, rf"({tag}=\.=(.*?);\.;)") for tag in proxy.get("extraStatTags", [])]
    tags = [{"tag_name": n, "regex": r} for n, r in _ISTIO_TAGS_BEFORE + extra + _ISTIO_TAGS_AFTER]
    matcher = proxy.get("proxyStatsMatcher", {})
    patterns = [{"prefix": p} for p in _ISTIO_PREFIXES + matcher.get("inclusionPrefixes", [])]
    patterns += [{"suffix": s} for s in _ISTIO_SUFFIXES + matcher.get("inclusionSuffixes", [])]
    patterns += [{"safe_regex": {"regex": r}} for r in _ISTIO_REGEXES + matcher.get("inclusionRegexps", [])]
    patterns += [{"prefix": "component"}, {"prefix": "istio"}]
    return {"use_all_default_tags": False, "stats_tags": tags, "stats_matcher": {"inclusion_list": {"patterns": patterns}}}
