//! Tests: runtime (being written).
