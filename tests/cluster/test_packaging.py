"""Tier 4: what users install from, against the real apiserver: the Helm
chart (lint, install, uninstall), manifests/install.yaml (server-side dry
run, and generated from the chart), and the example session."""
import os
import time

import yaml

from conftest import ROOT, dump_namespace, run
from kube import path
from sessions import wait_ready

CHART = ROOT / "charts" / "notebook-operator"


def test_the_chart_lints_and_install_yaml_is_rendered_from_it(k8s_bin):
    run(["helm", "lint", "--strict", str(CHART), "--kube-version", "1.37.2"])
    run([str(ROOT / "manifests" / "generate"), "--check"], env={**os.environ, "HELM": "helm"})


def test_helm_install_creates_the_operator(bare_ns, kube):
    ns = bare_ns
    # The operator's own namespace enforces the restricted Pod Security
    # Standard, as manifests/install.yaml sets it up.
    kube.patch(path("Namespace", None, ns), {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    release = "nbo-helm"
    out = run(["helm", "install", release, str(CHART), "--namespace", ns, "--kubeconfig", str(ns.cluster.kubeconfig),
               "--set", "networkPolicy.enabled=true", "--set", f"networkPolicy.sessionNamespaces={{{ns}}}"],
              timeout=300)
    assert "STATUS: deployed" in out, out
    full = f"{release}-notebook-operator"
    for kind, namespace, name in (("ServiceAccount", ns, full), ("Deployment", ns, full),
                                  ("Service", ns, f"{full}-metrics"),
                                  ("ClusterRole", None, f"{full}-manager"),
                                  ("ClusterRole", None, f"{full}-crd-reader"),
                                  ("ClusterRoleBinding", None, f"{full}-manager"),
                                  ("ClusterRoleBinding", None, f"{full}-crd-reader"),
                                  ("Role", ns, f"{full}-leader-election"),
                                  ("RoleBinding", ns, f"{full}-leader-election")):
        assert kube.get_opt(path(kind, namespace, name)), f"{kind} {name} missing after helm install"
    assert kube.list(path("NetworkPolicy", ns)), "the NetworkPolicy asked for"
    # The Deployment's pod passes admission (restricted Pod Security) and is
    # scheduled; no kubelet pulls its image at this tier, so it stays Pending.
    deadline = time.monotonic() + 60
    while True:
        pods = kube.list(path("Pod", ns), labelSelector=f"app.kubernetes.io/instance={release}")
        if (pods and pods[0]["spec"].get("nodeName")) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert pods and pods[0]["spec"].get("nodeName") == "nbo-node", pods
    out = run(["helm", "uninstall", release, "--namespace", ns, "--kubeconfig", str(ns.cluster.kubeconfig)], timeout=300)
    assert kube.get_opt(path("Deployment", ns, full)) is None
    assert kube.get_opt(path("ClusterRole", None, f"{full}-manager")) is None
    # The chart's CRDs stay (Helm never deletes CRDs): sessions survive an uninstall.
    assert kube.get_opt(path("CustomResourceDefinition", None, "notebooksessions.notebook.dev"))


def test_install_yaml_passes_a_server_side_dry_run(cluster):
    install = ROOT / "manifests" / "install.yaml"
    docs = [d for d in yaml.safe_load_all(install.read_text()) if d]
    # The Namespace first, for real: a dry run creates nothing, so the
    # namespaced objects after it would find no namespace.
    ns = next(d for d in docs if d["kind"] == "Namespace")
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(ns))
    out = cluster.kubectl("apply", "--dry-run=server", "-f", str(install))
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "ServiceAccount"} <= kinds
    assert out.count("(server dry run)") == len(docs), out
    cluster.kubectl("delete", "namespace", ns["metadata"]["name"], "--wait=false")


def test_the_example_session_applies_and_becomes_ready(kube, kubelet, operator, cluster):
    example = ROOT / "manifests" / "examples" / "session.yaml"
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    session = next(d for d in docs if d["kind"] == "NotebookSession")
    ns, name = session["metadata"]["namespace"], session["metadata"]["name"]
    # Its namespace is fixed: let an earlier one finish terminating.
    kube.wait_for("Namespace", None, ns, lambda o: o is None or not o["metadata"].get("deletionTimestamp"), 120)
    kubelet.manage(ns)
    try:
        cluster.kubectl("apply", "-f", str(example))
        s = wait_ready(kube, ns, name)
        assert s["status"]["endpoint"] == f"http://{name}.{ns}.svc:8888"
    except BaseException:
        print(dump_namespace(kube, cluster, kubelet, operator, ns))
        raise
    finally:
        kube.delete(path("Namespace", None, ns))
