//! The control-plane link: `protocol` (messages, topics, limits), `outbox`
//! (durable, acked events) and `mqtt` (rumqttc on its own thread, TLS,
//! regional failover). The worker talks only to [`mqtt::Link`].

pub mod mqtt;
pub mod outbox;
pub mod probe;
pub mod protocol;
