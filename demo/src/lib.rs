//! WebSocket backend and scenario driver for the demo and end-to-end tests.
