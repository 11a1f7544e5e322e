//! causeway-gateway: the WireGuard data plane (placeholder; being written).
