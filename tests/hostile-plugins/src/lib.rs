//! Misbehaving policy plugins for the plugin runtime's tests; each `examples/*.rs` is one
//! component. Nothing here is meant to be loaded by a real agent.
