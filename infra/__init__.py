"""The Azure infrastructure of a stack, as Pulumi components rendered from the DeploymentSpec."""
