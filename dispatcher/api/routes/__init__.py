"""The ingress's endpoints, one module per resource."""
