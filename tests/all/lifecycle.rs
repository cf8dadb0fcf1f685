//! Tests: lifecycle (being written).
