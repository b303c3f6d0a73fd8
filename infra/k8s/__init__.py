"""Kubernetes manifests of the AKS path, rendered as plain dicts from the DeploymentSpec (pure functions, no
Pulumi calls): `workload` (vLLM pods, validating init containers, PDB, KEDA), `inference` (the Gateway API
Inference Extension objects), `network` (NetworkPolicies). `infra/aks.py` hands them to pulumi-kubernetes."""
