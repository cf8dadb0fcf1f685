//! Tests: durability (being written).
