"""The gateway topology example (examples/gateway/azureml-managed-endpoint.yaml with the policy
examples/azureml-gateway.toml), checked without a cluster: the Istio resources with a CRD
schema here against it, and the wiring between all of them and the policy that a cluster
would accept and leave broken (a route to a host nobody declares, a DestinationRule on a
port the ServiceEntry lacks, a plugin on other pods than the gateway, a policy for another
host than the one the gateway serves)."""

import functools
import tomllib

import harness as h
import mesh

EXAMPLE = h.ROOT / "examples" / "gateway" / "azureml-managed-endpoint.yaml"
POLICY = h.ROOT / "examples" / "azureml-gateway.toml"


@functools.lru_cache(maxsize=None)
def docs():
    return tuple(mesh.load(EXAMPLE.read_text()))


def one(kind):
    (doc,) = [d for d in docs() if d["kind"] == kind]
    return doc


def test_resources_with_a_crd_schema_are_valid():
    checked = [d for d in docs() if mesh.crd_schema(d["apiVersion"], d["kind"]) is not None]
    assert {d["kind"] for d in checked} >= {"ServiceEntry", "DestinationRule"}
    for doc in checked:
        assert mesh.validate(doc) == [], doc["kind"]


def test_everything_lives_in_the_gateway_namespace():
    assert {d["metadata"]["namespace"] for d in docs()} == {"istio-ingress"}


def test_the_policy_guards_the_host_the_gateway_serves():
    policy = tomllib.loads(POLICY.read_text())
    served = set(one("Gateway")["spec"]["servers"][0]["hosts"])
    assert set(one("VirtualService")["spec"]["hosts"]) == served
    for rule in policy["rules"]:
        assert set(rule["hosts"]) <= served, rule["name"]


def test_every_route_leads_to_a_declared_port_with_tls_originated():
    vs, se, dr = one("VirtualService"), one("ServiceEntry"), one("DestinationRule")
    assert vs["spec"]["gateways"] == [one("Gateway")["metadata"]["name"]]
    ports = {p["number"]: p for p in se["spec"]["ports"]}
    tls = {s["port"]["number"]: s["tls"] for s in dr["spec"]["trafficPolicy"]["portLevelSettings"]}
    routes = [r for route in vs["spec"]["http"] for r in route.get("route", [])]
    assert routes
    for r in routes:
        dest = r["destination"]
        assert dest["host"] in se["spec"]["hosts"] and dest["host"] == dr["spec"]["host"]
        port = dest["port"]["number"]
        assert ports[port]["protocol"] == "HTTP" and ports[port]["targetPort"] == 443
        assert tls[port]["mode"] == "SIMPLE" and tls[port]["sni"] == dest["host"]
    for route in vs["spec"]["http"]:
        if "route" in route:
            assert route["rewrite"]["authority"] == route["route"][0]["destination"]["host"]


def test_the_endpoint_is_exported_to_the_gateway_alone():
    for kind in ("ServiceEntry", "DestinationRule"):
        assert one(kind)["spec"]["exportTo"] == ["."]
