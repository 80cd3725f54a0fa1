"""docs/kubernetes.md's manifests are valid YAML naming the handler the node set-up
registers, and docs/integration.md's runtime entries parse and use that handler."""

from __future__ import annotations

import tomllib

import yaml

from helpers.docs import tagged_blocks

HANDLER = "vmrt"


def test_runtimeclass_manifest() -> None:
    block = tagged_blocks("kubernetes.md")["runtimeclass"]
    assert block.lang == "yaml"
    [rc] = list(yaml.safe_load_all(block.text))
    assert rc["apiVersion"] == "node.k8s.io/v1"
    assert rc["kind"] == "RuntimeClass"
    assert rc["handler"] == HANDLER
    assert rc["metadata"]["name"]
    podfixed = rc["overhead"]["podFixed"]
    assert set(podfixed) == {"memory", "cpu"} and all(isinstance(v, str) for v in podfixed.values())
    assert all(isinstance(v, str) for v in rc["scheduling"]["nodeSelector"].values()), \
        "label values must be strings in YAML, or the API server rejects the object"


def test_pod_asks_for_the_runtimeclass() -> None:
    blocks = tagged_blocks("kubernetes.md")
    [rc] = list(yaml.safe_load_all(blocks["runtimeclass"].text))
    [pod] = list(yaml.safe_load_all(blocks["pod"].text))
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert pod["spec"]["runtimeClassName"] == rc["metadata"]["name"]
    assert pod["spec"]["containers"][0]["image"]


def test_cri_runtime_entries_use_the_handler_name() -> None:
    blocks = tagged_blocks("integration.md")
    crio = tomllib.loads(blocks["crio.conf"].text)
    entry = crio["crio"]["runtime"]["runtimes"][HANDLER]
    assert entry["runtime_type"] == "oci" and entry["runtime_path"].endswith("/vmrt")
    containerd = tomllib.loads(blocks["containerd-config.toml"].text)
    runtimes = containerd["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert runtimes[HANDLER]["runtime_type"] == "io.containerd.runc.v2"
    assert runtimes[HANDLER]["options"]["BinaryName"].endswith("/vmrt")


def test_every_tagged_block_parses() -> None:
    for doc in ("integration.md", "kubernetes.md"):
        for block in tagged_blocks(doc).values():
            if block.lang == "toml":
                tomllib.loads(block.text)
            elif block.lang == "yaml":
                list(yaml.safe_load_all(block.text))
            else:
                assert block.lang == "sh", f"{doc}: {block.name} has no language"
