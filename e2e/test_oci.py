"""OCI delivery, checked by readers that are not claimgate: `claimgate package` builds the Wasm
image (Istio's compat variant) as an OCI layout and pushes it; skopeo (containers/image) reads
the layout and a real registry (CNCF distribution, `docker-registry`, on 127.0.0.1) and pulls by
digest; Python's tarfile/gzip unpack the layer. The WasmPlugin `manifest` writes for an oci://
URL carries the image manifest digest, the one istio-agent compares `sha256` with."""

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request

import pytest

import harness as h
import mesh

POLICY = h.ROOT / "e2e" / "kind" / "policy.toml"
# Fixed flags so the emitted WasmPlugin is valid whatever the defaults become.
PLACEMENT = ["--namespace", "ml-serving", "--selector", "app=fraud-scoring"]

def run(args, **kwargs):
    kwargs.setdefault("text", True)
    return subprocess.run([str(a) for a in args], capture_output=True, timeout=120, **kwargs)


def package(layout, *extra, **kwargs):
    out = run([h.CLAIMGATE, "package", h.WASM, "-o", layout, *extra], **kwargs)
    assert out.returncode == 0, out.stderr
    digest = out.stdout.strip()
    assert digest.startswith("sha256:") and len(digest) == 71, out.stdout
    return digest


def skopeo(*args):
    out = run(["skopeo", "--insecure-policy", *args])
    assert out.returncode == 0, out.stderr
    return out.stdout


def plugin_from_layer(blob):
    """plugin.wasm from a compat layer, as istio-agent finds it (an entry named plugin.wasm)."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as tar:
        names = tar.getnames()
        assert names == ["plugin.wasm"], names
        return tar.extractfile("plugin.wasm").read()


def pulled_plugin(copied):
    """Checks a `skopeo copy … dir:` copy as istio-agent's compat reader would; returns plugin.wasm."""
    manifest = json.loads((copied / "manifest.json").read_text())
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["annotations"] == {"module.wasm.image/variant": "compat"}
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    blob = (copied / layer["digest"].removeprefix("sha256:")).read_bytes()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
    return plugin_from_layer(blob)


def wasm_plugin(*args):
    out = run([h.CLAIMGATE, "manifest", POLICY, *args, *PLACEMENT])
    assert out.returncode == 0, out.stderr
    plugin = mesh.load(out.stdout)[0]
    assert plugin["kind"] == "WasmPlugin" and mesh.validate(plugin) == []
    return plugin["spec"]


def test_the_layout_is_what_skopeo_reads_and_manifest_writes(tmp_path):
    layout = tmp_path / "image"
    digest = package(layout, "--tag", "0.1.0")
    # The same module gives the same image: a rebuild does not change the digest.
    assert package(tmp_path / "again", "--tag", "0.1.0") == digest

    inspected = json.loads(skopeo("inspect", f"oci:{layout}:0.1.0"))
    assert inspected["Digest"] == digest
    raw = run(["skopeo", "inspect", "--raw", f"oci:{layout}:0.1.0"], text=False)
    assert raw.returncode == 0
    assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == digest

    copied = tmp_path / "copied"
    skopeo("copy", f"oci:{layout}:0.1.0", f"dir:{copied}")
    assert pulled_plugin(copied) == h.WASM.read_bytes()

    spec = wasm_plugin("--wasm-url", "oci://registry.example.com/ml/claimgate:0.1.0", "--oci-layout", layout)
    assert spec["url"] == "oci://registry.example.com/ml/claimgate:0.1.0"
    assert spec["sha256"] == digest.removeprefix("sha256:")
    assert spec["sha256"] != hashlib.sha256(h.WASM.read_bytes()).hexdigest()
    # The digest `package` printed, given as --sha256 (with or without its prefix), or pinned
    # in the URL, says the same.
    assert wasm_plugin("--wasm-url", "oci://r.example/claimgate:0.1.0", "--sha256", digest)["sha256"] == spec["sha256"]
    pinned = f"oci://r.example/claimgate@{digest}"
    assert wasm_plugin("--wasm-url", pinned)["sha256"] == spec["sha256"]
    assert wasm_plugin("--wasm-url", pinned, "--oci-layout", layout)["sha256"] == spec["sha256"]


def test_manifest_refuses_digests_that_do_not_match_the_url_kind(tmp_path):
    layout = tmp_path / "image"
    digest = package(layout)
    other = "ab" * 32
    base = [h.CLAIMGATE, "manifest", POLICY, *PLACEMENT]
    cases = [
        # The old behaviour: the file's hash for an oci:// URL (a plugin that never loads).
        (["--wasm-url", "oci://r.example/claimgate:1", "--wasm", h.WASM], "image manifest digest"),
        (["--wasm-url", "oci://r.example/claimgate:1"], "--oci-layout"),
        (["--wasm-url", "oci://r.example/claimgate:1", "--oci-layout", layout, "--sha256", other], other),
        (["--wasm-url", f"oci://r.example/claimgate@sha256:{other}", "--oci-layout", layout], other),
        (["--wasm-url", "oci://r.example/claimgate@sha256:XYZ", "--sha256", digest], "not a sha256 digest"),
        (["--wasm-url", "https://r.example/claimgate.wasm", "--oci-layout", layout], "only for oci://"),
        (["--wasm-url", "https://r.example/claimgate.wasm", "--wasm", h.WASM, "--sha256", other], "is not the SHA-256"),
        (["--wasm-url", "oci://r.example/claimgate:1", "--oci-layout", tmp_path / "missing"], "index.json"),
    ]
    for extra, message in cases:
        out = run([*base, *extra])
        assert out.returncode == 1 and message in out.stderr and out.stdout == "", (extra, out.stderr)
    # http(s): the file's own hash, as before.
    spec = wasm_plugin("--wasm-url", "https://r.example/claimgate.wasm", "--wasm", h.WASM)
    assert spec["sha256"] == hashlib.sha256(h.WASM.read_bytes()).hexdigest()


def test_package_refuses_what_it_must_not_write(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    out = run([h.CLAIMGATE, "package", h.WASM, "-o", mine])
    assert out.returncode == 1 and "not an OCI image layout" in out.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    out = run([h.CLAIMGATE, "package", POLICY, "-o", tmp_path / "x"])
    assert out.returncode == 1 and "not a WebAssembly module" in out.stderr


@contextlib.contextmanager
def registry(tmp_path, htpasswd=None):
    """A CNCF distribution registry on 127.0.0.1 (plain HTTP), at most 5 minutes, removed after."""
    port = h.free_port()
    root = tmp_path / f"registry-{port}"
    auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n" if htpasswd else ""
    config = tmp_path / f"registry-{port}.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    log = open(tmp_path / f"registry-{port}.log", "wb")
    proc = subprocess.Popen(["timeout", "300", "docker-registry", "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for credentials
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / f"registry-{port}.log").read_text()
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        h.stop_process(proc, log)
        shutil.rmtree(root, ignore_errors=True)


def test_push_to_a_real_registry_and_pull_by_digest(tmp_path):
    with registry(tmp_path) as host:
        digest = package(tmp_path / "image", "--push", f"{host}/ml/claimgate:0.1.0", "--plain-http")
        inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/ml/claimgate:0.1.0"))
        assert inspected["Digest"] == digest
        # The layout written beside the push is the same image.
        assert json.loads(skopeo("inspect", f"oci:{tmp_path / 'image'}:0.1.0"))["Digest"] == digest
        pulled = tmp_path / "pulled"
        skopeo("copy", "--src-tls-verify=false", f"docker://{host}/ml/claimgate@{digest}", f"dir:{pulled}")
        assert pulled_plugin(pulled) == h.WASM.read_bytes()
        spec = wasm_plugin("--wasm-url", f"oci://{host}/ml/claimgate:0.1.0", "--oci-layout", tmp_path / "image")
        assert "sha256:" + spec["sha256"] == inspected["Digest"]


def test_push_with_credentials_keeps_them_secret(tmp_path):
    crypt = pytest.importorskip("crypt")  # bcrypt for htpasswd, from the system's libcrypt
    password = "pw-" + os.urandom(12).hex()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("ci:" + crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH)) + "\n")
    with registry(tmp_path, htpasswd) as host:
        target = f"{host}/claimgate:1"
        anonymous = run([h.CLAIMGATE, "package", h.WASM, "-o", tmp_path / "a", "--push", target, "--plain-http"])
        assert anonymous.returncode == 1 and "401" in anonymous.stderr
        wrong = run(
            [h.CLAIMGATE, "package", h.WASM, "-o", tmp_path / "b", "--push", target, "--plain-http", "--username", "ci", "--password-stdin"],
            input="not-" + password,
        )
        assert wrong.returncode == 1 and password not in wrong.stdout + wrong.stderr
        env = {**os.environ, "CLAIMGATE_REGISTRY_USERNAME": "ci", "CLAIMGATE_REGISTRY_PASSWORD": password}
        good = run([h.CLAIMGATE, "package", h.WASM, "-o", tmp_path / "c", "--push", target, "--plain-http"], env=env)
        assert good.returncode == 0, good.stderr
        assert password not in good.stdout + good.stderr
        stdin = run(
            [h.CLAIMGATE, "package", h.WASM, "-o", tmp_path / "d", "--push", target, "--plain-http", "--username", "ci", "--password-stdin"],
            input=password + "\n",
        )
        assert stdin.returncode == 0, stdin.stderr
        inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"--creds=ci:{password}", f"docker://{target}"))
        assert inspected["Digest"] == good.stdout.strip() == stdin.stdout.strip()
