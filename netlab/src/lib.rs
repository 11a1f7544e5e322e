//! causeway-netlab (placeholder; being written).
