"""Tier 4: what users install from, against the real apiserver: the Helm
chart (lint, install, uninstall), manifests/install.yaml (server-side dry
run, and generated from the chart), the gateway's objects as rendered, and
the example session."""
import json
import os
import subprocess
import time

import pytest
import yaml

from conftest import ROOT, dump_namespace, is_gateway, render_chart, rendered, run
from kube import path
from sessions import wait_ready

CHART = ROOT / "charts" / "notebook-operator"


def test_the_chart_lints_and_install_yaml_is_rendered_from_it(k8s_bin):
    run(["helm", "lint", "--strict", str(CHART), "--kube-version", "1.37.2"])
    run([str(ROOT / "manifests" / "generate"), "--check"], env={**os.environ, "HELM": "helm"})


def offline_helm_template(*flags: str) -> subprocess.CompletedProcess:
    """`helm template` of the chart as a GitOps tool runs it: no cluster to
    ask (no kubeconfig), only the flags given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBECONFIG")}
    env["KUBECONFIG"] = os.devnull
    return subprocess.run(["helm", "template", "nbo", str(CHART), "--namespace", "nbo-system", *flags],
                          capture_output=True, text=True, timeout=120, env=env)


def test_a_plain_helm_template_renders_offline_without_kube_version(k8s_bin):
    """Issue 18: Helm's offline default version is older than the chart needs,
    so a kubeVersion in Chart.yaml failed every `helm template` without
    --kube-version."""
    r = offline_helm_template()
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert rendered(docs, "Deployment", "nbo-notebook-operator")
    # And the same objects as for a named, new enough version.
    named = offline_helm_template("--kube-version", "1.34.0")
    assert named.returncode == 0, named.stderr
    assert r.stdout == named.stdout


def test_an_old_kubernetes_is_refused_with_what_to_do(k8s_bin):
    for old in ("1.29.0", "1.32.9"):
        r = offline_helm_template("--kube-version", old)
        assert r.returncode != 0, f"{old} rendered:\n{r.stdout[:500]}"
        assert "notebook-operator needs Kubernetes 1.33.0 or newer" in r.stderr, r.stderr
        assert f"the target is v{old}" in r.stderr and "--kube-version" in r.stderr, r.stderr
    assert offline_helm_template("--kube-version", "1.33.0").returncode == 0


def test_helm_install_creates_the_operator(bare_ns, kube):
    ns = bare_ns
    # The operator's own namespace enforces the restricted Pod Security
    # Standard, as manifests/install.yaml sets it up.
    kube.patch(path("Namespace", None, ns), {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    release = "nbo-helm"
    out = run(["helm", "install", release, str(CHART), "--namespace", ns, "--kubeconfig", str(ns.cluster.kubeconfig)],
              timeout=300)
    assert "STATUS: deployed" in out, out
    full = f"{release}-notebook-operator"
    gw = f"{full}-gateway"
    for kind, namespace, name in (("ServiceAccount", ns, full), ("Deployment", ns, full),
                                  ("Service", ns, f"{full}-metrics"),
                                  ("ServiceAccount", ns, gw), ("Deployment", ns, gw), ("Service", ns, gw),
                                  ("Service", ns, f"{gw}-metrics"),
                                  ("ClusterRole", None, gw), ("ClusterRoleBinding", None, gw),
                                  ("Role", ns, f"{gw}-cap"), ("RoleBinding", ns, f"{gw}-cap"),
                                  ("ClusterRole", None, f"{full}-manager"),
                                  ("ClusterRole", None, f"{full}-crd-reader"),
                                  ("ClusterRoleBinding", None, f"{full}-manager"),
                                  ("ClusterRoleBinding", None, f"{full}-crd-reader"),
                                  ("Role", ns, f"{full}-leader-election"),
                                  ("RoleBinding", ns, f"{full}-leader-election")):
        assert kube.get_opt(path(kind, namespace, name)), f"{kind} {name} missing after helm install"
    # The chart makes no NetworkPolicy of its own: the operator gives each
    # session one, with the peers the chart passes it.
    assert not kube.list(path("NetworkPolicy", ns))
    dep = kube.get(path("Deployment", ns, full))
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--network-policy=true" in args, args
    assert any(a.startswith("--policy-ingress-from=[") for a in args), args
    # Each Deployment's pod (operator and gateway) passes admission
    # (restricted Pod Security) and is scheduled; no kubelet pulls the image
    # at this tier, so they stay Pending.
    for name, selector in ((full, f"app.kubernetes.io/name=notebook-operator,app.kubernetes.io/instance={release}"),
                           (gw, f"app.kubernetes.io/component=gateway,app.kubernetes.io/instance={release}")):
        deadline = time.monotonic() + 60
        while True:
            pods = kube.list(path("Pod", ns), labelSelector=selector)
            if (pods and pods[0]["spec"].get("nodeName")) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(pods) == 1 and pods[0]["spec"].get("nodeName") == "nbo-node", (name, pods)
        assert pods[0]["metadata"]["name"].startswith(name + "-"), (name, pods[0]["metadata"]["name"])
    # Neither Deployment's selector picks the other's pod.
    for name in (full, gw):
        sel = kube.get(path("Deployment", ns, name))["spec"]["selector"]["matchLabels"]
        picked = kube.list(path("Pod", ns), labelSelector=",".join(f"{k}={v}" for k, v in sel.items()))
        assert [p["metadata"]["name"].rsplit("-", 2)[0] for p in picked] == [name], (name, picked)
    out = run(["helm", "uninstall", release, "--namespace", ns, "--kubeconfig", str(ns.cluster.kubeconfig)], timeout=300)
    assert kube.get_opt(path("Deployment", ns, full)) is None
    assert kube.get_opt(path("Deployment", ns, gw)) is None
    assert kube.get_opt(path("ClusterRole", None, f"{full}-manager")) is None
    assert kube.get_opt(path("ClusterRole", None, gw)) is None
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


# -- the gateway's objects, as the chart renders them -------------------------------------
GATEWAY = "rel-notebook-operator-gateway"
GATEWAY_RULES = [
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    {"apiGroups": ["notebook.dev"], "resources": ["notebooksessions"],
     "verbs": ["get", "list", "watch", "create", "delete", "patch"]},
    {"apiGroups": ["notebook.dev"], "resources": ["notebookpools"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
]


def normalised(rules: list[dict]) -> list[tuple]:
    return sorted((tuple(sorted(r.get("apiGroups", []))), tuple(sorted(r.get("resources", []))),
                   tuple(sorted(r.get("verbs", []))), tuple(sorted(r.get("resourceNames", []))),
                   tuple(sorted(r.get("nonResourceURLs", [])))) for r in rules)


def gateway_docs(docs):
    return [d for d in docs if is_gateway(d)]


def test_the_gateway_rbac_is_exactly_what_it_needs(k8s_bin):
    docs = render_chart("rel", "sys")
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in gateway_docs(docs))
    assert kinds == sorted([("ServiceAccount", GATEWAY), ("ClusterRole", GATEWAY), ("ClusterRoleBinding", GATEWAY),
                            ("Role", f"{GATEWAY}-cap"), ("RoleBinding", f"{GATEWAY}-cap"),
                            ("Deployment", GATEWAY), ("Service", GATEWAY), ("Service", f"{GATEWAY}-metrics")]), kinds
    role = rendered(docs, "ClusterRole", GATEWAY)
    assert normalised(role["rules"]) == normalised(GATEWAY_RULES), yaml.safe_dump(role["rules"])
    assert "aggregationRule" not in role
    binding = rendered(docs, "ClusterRoleBinding", GATEWAY)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": GATEWAY}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": GATEWAY, "namespace": "sys"}]
    assert rendered(docs, "ServiceAccount", GATEWAY)["metadata"]["namespace"] == "sys"
    # The per-user cap ledgers: Leases of its own namespace only, and no delete.
    cap = rendered(docs, "Role", f"{GATEWAY}-cap")
    assert cap["metadata"]["namespace"] == "sys"
    ledgers = [f"{GATEWAY}-cap-{i}" for i in range(16)]
    assert normalised(cap["rules"]) == normalised([
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"],
         "resourceNames": ledgers}])
    args = rendered(docs, "Deployment", GATEWAY)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--cap-ledger") + 1] == f"{GATEWAY}-cap", args
    cap_binding = rendered(docs, "RoleBinding", f"{GATEWAY}-cap")
    assert cap_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{GATEWAY}-cap"}
    assert cap_binding["subjects"] == [{"kind": "ServiceAccount", "name": GATEWAY, "namespace": "sys"}]
    # No other binding names the gateway's ServiceAccount.
    for d in docs:
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding") and d is not binding and d is not cap_binding:
            assert all(s.get("name") != GATEWAY for s in d.get("subjects", [])), d
    # The operator's own objects are the same whether the gateway is on or
    # off, but for the one peer the gateway adds to the sessions'
    # NetworkPolicies (test_the_sidecar_peers_admit_the_gateway_when_enabled).
    off = render_chart("rel", "sys", "gateway.enabled=false")
    assert not gateway_docs(off), [(d["kind"], d["metadata"]["name"]) for d in gateway_docs(off)]

    def without_peers(ds):
        for d in ds:
            if d["kind"] == "Deployment":
                for c in d["spec"]["template"]["spec"]["containers"]:
                    c["args"] = [a for a in c["args"] if not a.startswith("--policy-ingress-from=")]
        return ds
    assert without_peers([d for d in docs if not is_gateway(d)]) == without_peers(off)


def test_the_gateway_deployment_runs_the_one_image_under_restricted_pod_security(k8s_bin):
    docs = render_chart("rel", "sys", "image.tag=1.2.3", "gateway.maxSessionsPerUser=7", "gateway.reviewTTL=30s")
    dep = rendered(docs, "Deployment", GATEWAY)
    op = rendered(docs, "Deployment", "rel-notebook-operator")
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 1
    assert pod["serviceAccountName"] == GATEWAY
    assert pod.get("automountServiceAccountToken", True), "the gateway needs its token for the reviews"
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert pod["securityContext"] == op["spec"]["template"]["spec"]["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["image"] == "notebook-operator:1.2.3" == op["spec"]["template"]["spec"]["containers"][0]["image"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    args = c["args"]
    assert args[0] == "gateway"
    flags = dict((f, v) for f, v in zip(args[1::2], args[2::2]) if f != "--allowed-host")
    assert flags == {"--listen": "0.0.0.0:8080", "--sidecar-port": "8888", "--max-sessions-per-user": "7",
                     "--cap-ledger": f"{GATEWAY}-cap", "--review-ttl": "30s",
                     "--metrics-listen": "0.0.0.0:9090"}, args
    # The cap ledgers' namespace is the pod's own, from the downward API.
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in c["env"], c["env"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
    # Token audiences, when asked for, one flag each.
    aud = rendered(render_chart("rel", "sys", "gateway.tokenAudiences={nbo-gateway,other}"), "Deployment", GATEWAY)
    aargs = aud["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [aargs[i + 1] for i, a in enumerate(aargs) if a == "--token-audience"] == ["nbo-gateway", "other"], aargs
    # Host names: the gateway Service's DNS names always, the Ingress host when
    # the Ingress is on, then gateway.allowedHosts; origins only as listed.
    def repeated(args, flag):
        return [args[i + 1] for i, a in enumerate(args) if a == flag]
    service_names = [GATEWAY, f"{GATEWAY}.sys", f"{GATEWAY}.sys.svc", f"{GATEWAY}.sys.svc.cluster.local"]
    assert repeated(args, "--allowed-host") == service_names, args
    assert repeated(args, "--allowed-origin") == [], args
    ing = rendered(render_chart("rel", "sys", "gateway.ingress.enabled=true", "gateway.ingress.host=nb.example.com",
                                "gateway.allowedHosts={*.corp.example,nb.example.com}",
                                "gateway.allowedOrigins={https://app.example.org}", "gateway.clusterDomain=k8s.local"),
                   "Deployment", GATEWAY)
    iargs = ing["spec"]["template"]["spec"]["containers"][0]["args"]
    assert repeated(iargs, "--allowed-host") == [*service_names[:3], f"{GATEWAY}.sys.svc.k8s.local",
                                                 "nb.example.com", "*.corp.example"], iargs
    assert repeated(iargs, "--allowed-origin") == ["https://app.example.org"], iargs
    # The default cap the values document.
    default = rendered(render_chart("rel", "sys"), "Deployment", GATEWAY)
    dargs = default["spec"]["template"]["spec"]["containers"][0]["args"]
    assert dict(zip(dargs[1::2], dargs[2::2]))["--max-sessions-per-user"] == "10"
    # Its pods are its own: the operator's selector does not pick them, nor the reverse.
    g_labels = dep["spec"]["template"]["metadata"]["labels"]
    o_labels = op["spec"]["template"]["metadata"]["labels"]
    o_sel, g_sel = op["spec"]["selector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"]
    assert not o_sel.items() <= g_labels.items() and not g_sel.items() <= o_labels.items()
    assert g_sel.items() <= g_labels.items()


def test_the_gateway_pod_is_admitted_by_restricted_pod_security(cluster, bare_ns, kube):
    ns = str(bare_ns)
    kube.patch(path("Namespace", None, ns),
               {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    docs = render_chart("rel", ns)
    for d in docs:
        if is_gateway(d) and d["kind"] in ("ServiceAccount", "Deployment"):
            out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(d))
            assert "(server dry run)" in out, out
    # The pod itself, as its ReplicaSet would create it: admission lets it in
    # without a warning (Pod Security admission refuses, or warns, otherwise).
    dep = rendered(docs, "Deployment", GATEWAY)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "gateway-probe", "namespace": ns, "labels": dep["spec"]["template"]["metadata"]["labels"]},
           "spec": {**dep["spec"]["template"]["spec"], "serviceAccountName": "default"}}
    r = subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "apply", "--dry-run=server", "-f", "-"],
                       input=yaml.safe_dump(pod), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "(server dry run)" in r.stdout, r.stdout + r.stderr
    assert "PodSecurity" not in r.stderr and "violate" not in r.stderr, r.stderr
    # And the same check refuses a pod that breaks the standard (the check can fail).
    bad = {**pod, "spec": {**pod["spec"], "securityContext": {}}}
    r = subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "apply", "--dry-run=server", "-f", "-"],
                       input=yaml.safe_dump(bad), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "restricted" in r.stderr, r.stdout + r.stderr


def test_the_gateway_service_fronts_its_pods_on_port_80(k8s_bin):
    docs = render_chart("rel", "sys")
    svc = rendered(docs, "Service", GATEWAY)
    dep = rendered(docs, "Deployment", GATEWAY)
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    metrics = rendered(docs, "Service", "rel-notebook-operator-metrics")
    assert not metrics["spec"]["selector"].items() <= labels.items(), "the metrics Service must not pick the gateway"
    # /metrics has a Service of its own, inside the cluster; the public one never routes to it.
    m = rendered(docs, "Service", f"{GATEWAY}-metrics")
    assert m["spec"]["type"] == "ClusterIP" and m["spec"]["selector"] == svc["spec"]["selector"]
    assert m["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert not [d for d in render_chart("rel", "sys", "gateway.metrics.service.enabled=false")
                if d["metadata"]["name"] == f"{GATEWAY}-metrics"]
    lb = rendered(render_chart("rel", "sys", "gateway.service.type=LoadBalancer", "gateway.service.port=8443"),
                  "Service", GATEWAY)
    assert lb["spec"]["type"] == "LoadBalancer" and lb["spec"]["ports"][0]["port"] == 8443


def test_the_gateway_ingress_only_when_enabled(cluster, bare_ns):
    assert not [d for d in render_chart("rel", "sys") if d["kind"] == "Ingress"]
    docs = render_chart("rel", str(bare_ns), "gateway.ingress.enabled=true", "gateway.ingress.className=nginx",
                        "gateway.ingress.host=nb.example.org",
                        r"gateway.ingress.annotations.nginx\.ingress\.kubernetes\.io/proxy-buffering=off",
                        "gateway.ingress.tls[0].secretName=nb-tls", "gateway.ingress.tls[0].hosts[0]=nb.example.org")
    ing = rendered(docs, "Ingress", GATEWAY)
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/proxy-buffering": "off"}
    assert ing["spec"]["tls"] == [{"secretName": "nb-tls", "hosts": ["nb.example.org"]}]
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "nb.example.org"
    (p,) = rule["http"]["paths"]
    assert p["path"] == "/" and p["pathType"] == "Prefix"
    assert p["backend"] == {"service": {"name": GATEWAY, "port": {"name": "http"}}}
    # The apiserver accepts it as rendered.
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(ing))
    assert "(server dry run)" in out, out
    # Without the gateway there is no Ingress to it, even if asked.
    assert not [d for d in render_chart("rel", "sys", "gateway.enabled=false", "gateway.ingress.enabled=true")
                if d["kind"] == "Ingress"]
    with pytest.raises(RuntimeError, match="gateway.ingress.host"):
        render_chart("rel", "sys", "gateway.ingress.enabled=true", "gateway.ingress.host=")


def test_the_sidecar_peers_admit_the_gateway_when_enabled(k8s_bin):
    """The operator puts the chart's `--policy-ingress-from` peers in every
    session's NetworkPolicy: the operator, the gateway (when enabled), the
    agent namespaces and `networkPolicy.extraFrom`."""
    def flag(docs, name):
        args = rendered(docs, "Deployment", "rel-notebook-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
        return [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]

    def peers(*sets):
        (text,) = flag(render_chart("rel", "sys", *sets), "policy-ingress-from")
        return json.loads(text)

    dep = rendered(render_chart("rel", "sys"), "Deployment", GATEWAY)
    gw_labels = dep["spec"]["template"]["metadata"]["labels"]

    def admits_gateway(from_):
        return any(p.get("podSelector", {}).get("matchLabels")
                   and p["podSelector"]["matchLabels"].items() <= gw_labels.items()
                   and p.get("namespaceSelector") == {"matchLabels": {"kubernetes.io/metadata.name": "sys"}}
                   for p in from_)

    on, off = peers(), peers("gateway.enabled=false")
    assert admits_gateway(on), on
    assert not admits_gateway(off), off
    assert len(on) == len(off) + 1
    assert {"namespaceSelector": {"matchLabels": {"notebook.dev/agents": "true"}}} in on, on
    extra = peers("networkPolicy.extraFrom[0].ipBlock.cidr=10.1.0.0/16")
    assert extra[-1] == {"ipBlock": {"cidr": "10.1.0.0/16"}}, extra
    # Egress defaults and the runtime class reach the operator as flags.
    docs = render_chart("rel", "sys", "networkPolicy.egress[0].cidr=10.2.0.0/16", "runtimeClassName=gvisor")
    assert json.loads(flag(docs, "default-egress")[0]) == [{"cidr": "10.2.0.0/16"}]
    assert flag(docs, "default-runtime-class") == ["gvisor"]
    assert flag(docs, "kernel-ephemeral-storage-limit") == ["10Gi"]
    # Off: no policies, no peers.
    docs = render_chart("rel", "sys", "networkPolicy.enabled=false")
    assert flag(docs, "network-policy") == ["false"] and not flag(docs, "policy-ingress-from")
