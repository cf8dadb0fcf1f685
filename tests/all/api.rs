//! Tests: api (being written).
