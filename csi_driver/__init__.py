"""The fusecache CSI driver: Identity, Controller and Node services over gRPC on a unix socket."""
