//! Tests: sse (being written).
