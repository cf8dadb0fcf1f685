//! Tests: plugin_cli (being written).
