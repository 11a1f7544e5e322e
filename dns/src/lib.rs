//! causeway-dns: the svc.global authoritative server (placeholder; being written).
