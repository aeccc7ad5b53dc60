"""Deployment: the local stack, the jars it needs, and the cluster manifests."""
