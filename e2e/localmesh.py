"""A local stand-in for one Istio sidecar, built from claimgate's manifests: the pinned Envoy
receives the filter over ECDS from a watched file (istiod's push), after the WasmPlugin was
validated against Istio's CRDs and its module fetched and checksum-checked (istio-agent's
part). Identity comes from two real OpenID Providers (oidc-provider, Keycloak-shaped and
Entra-shaped). Used by test_mesh.py and the demo.
"""

import http.server
import subprocess
from pathlib import Path

import harness as h
import idp
import mesh

WORKLOAD = {"namespace": "ml-serving", "labels": {"app": "fraud-scoring", "version": "v1"}, "service": "fraud-scoring", "port": 8080}


# Envoy's access log prints the identity the filter exposes as filter state.
ACCESS_LOG = h.access_log(
    "ACCESS %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% subject=%FILTER_STATE(wasm.claimgate.subject:PLAIN)% "
    "rule=%FILTER_STATE(wasm.claimgate.rule:PLAIN)% decision=%FILTER_STATE(wasm.claimgate.decision:PLAIN)%"
)


class ModuleServer:
    """Serves the built .wasm over HTTP, as a registry or in-cluster file server would."""

    def __init__(self, folder):
        folder = str(folder)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=folder, **kwargs)

            def log_message(self, *args):
                pass

        self.server = h.serve(Handler)
        self.port = self.server.server_address[1]

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.server.shutdown()


def manifest(policy_path, wasm_url, extra=()):
    args = [h.CLAIMGATE, "manifest", policy_path, "--wasm-url", wasm_url, "--wasm", h.WASM, "--namespace", WORKLOAD["namespace"], "--selector", "app=fraud-scoring", "--port", "8080", *extra]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return mesh.load(out.stdout)


def mesh_bootstrap(listen_port, admin_port, upstream_port, filters, clusters):
    """A sidecar's inbound side: `filters` (ECDS entries and the router) before the workload."""
    inbound = f"inbound|{WORKLOAD['port']}||"
    listener = h.http_listener("virtualInbound", listen_port, filters, {"route": {"cluster": inbound}}, stat_prefix="inbound_0.0.0.0_8080", logs=[ACCESS_LOG])
    return {
        # Istio's node identity for a sidecar (ECDS subscriptions need one).
        "node": {"id": "sidecar~127.0.0.1~fraud-scoring-v1-0.ml-serving~ml-serving.svc.cluster.local", "cluster": "fraud-scoring.ml-serving"},
        "admin": h.admin(admin_port),
        "static_resources": {"listeners": [listener], "clusters": [h.static_cluster(inbound, upstream_port), *clusters]},
    }


class LocalMesh:
    """One sidecar's worth of Istio, built from the manifests, around real Envoy."""

    def __init__(self, binary, workdir, policy_for, ports=None):
        """`policy_for(keycloak, entra)` gives the policy text once the providers run (their
        issuers hold their ports). `ports` (keycloak, entra, envoy, admin) fixes the ports,
        e.g. for the demo; by default the OS picks free ones."""
        kc_port, entra_port, listen_port, admin_port = ports or (h.free_port(), h.free_port(), h.free_port(), h.free_port())
        self.workdir = Path(workdir)
        self.parts = []  # started so far, stopped in reverse on failure or stop()
        try:
            self.kc = self._started(idp.OidcProvider(idp.keycloak_realm(), kc_port, workdir))
            self.entra = self._started(idp.OidcProvider(idp.entra_tenant(), entra_port, workdir))
            self.upstream = self._started(h.Upstream())
            self.modules = self._started(ModuleServer(h.WASM.parent))
            self.agent = mesh.IstioAgent(self.workdir / "wasm-cache")
            self.ecds = self.workdir / "ecds" / "claimgate.json"
            self.ecds.parent.mkdir()
            self.version = 0
            self.docs = self.push(policy_for(self.kc, self.entra))
            plugins = [d for d in self.docs if d["kind"] == "WasmPlugin" and mesh.applies_to(d, WORKLOAD)]
            assert len(plugins) == 1, "the WasmPlugin does not select the sample workload"
            config = mesh_bootstrap(listen_port, admin_port, self.upstream.port, mesh.http_filters(plugins, self.ecds), mesh.service_entry_clusters(self.docs, WORKLOAD["namespace"]))
            self.envoy = self._started(h.Envoy(binary, config, workdir, concurrency=2))
            self.envoy.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _started(self, part):
        self.parts.append(part)
        return part

    def push(self, policy):
        """Compile → manifests → validate → agent fetch → ECDS file: one istiod push."""
        self.version += 1
        path = self.workdir / f"policy-v{self.version}.toml"
        path.write_text(policy)
        docs = manifest(path, self.modules.url(h.WASM.name))
        for doc in docs:
            problems = mesh.validate(doc)
            assert not problems, (doc["kind"], problems)
        plugin = next(d for d in docs if d["kind"] == "WasmPlugin")
        module = self.agent.fetch(plugin)
        mesh.write_ecds(self.ecds, [mesh.extension_config(plugin, module)], self.version)
        self.plugin = plugin
        return docs

    def keycloak_service(self, client="fraud-pipeline"):
        return self.kc.client_token(client, f"{client}-secret", "score")

    def stop(self):
        while self.parts:
            self.parts.pop().stop()
