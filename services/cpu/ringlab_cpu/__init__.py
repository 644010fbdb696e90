"""The cpu service: one physical CPU (pCPU) behind a KVM_RUN-like gRPC API."""
