"""Built-in Azure role definitions the stacks use: one table, read by the program, the preview and the policy pack.

Pure data (no Pulumi import) so the policy pack can load it in its own, smaller environment.
"""

from __future__ import annotations

# Built-in role definition ids are the same in every tenant.
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"

ROLE_NAMES: dict[str, str] = {
    STORAGE_BLOB_DATA_READER: "Storage Blob Data Reader",
    STORAGE_BLOB_DATA_CONTRIBUTOR: "Storage Blob Data Contributor",
    STORAGE_BLOB_DATA_OWNER: "Storage Blob Data Owner",
}

# Roles that grant access to data (not only to the control plane): they must be scoped to the one container or
# account that holds the data, never to a whole resource group or subscription.
DATA_ROLES = frozenset(ROLE_NAMES)


def role_guid(role_definition_id: str) -> str:
    """The GUID at the end of `/subscriptions/<s>/providers/Microsoft.Authorization/roleDefinitions/<guid>`."""
    return str(role_definition_id).rstrip("/").rsplit("/", 1)[-1].lower()
