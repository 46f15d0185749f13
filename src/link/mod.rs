//! The control-plane link: `protocol` (messages, topics, limits), `outbox`
//! (durable, acked events), `session` (transport-neutral delivery: outbox,
//! acks, re-sends, regional failover and fail-back, `hello`/`status`) and
//! the transports behind its [`session::Transport`] trait: `mqtt` (rumqttc,
//! TLS, liveness) today. `probe` checks a broker without a session
//! (`liftoff check`, fail-back probes).
//!
//! Call order: [`prepare`] (picks and builds the transport from the
//! configuration), then [`Prepared::start`] (the session over it). The
//! worker talks only to the returned [`session::Session`].

pub mod mqtt;
pub mod outbox;
pub mod probe;
pub mod protocol;
pub mod session;

use crate::config::Config;
use crate::identity::Identity;
use outbox::Outbox;
use protocol::WorkerMsg;
use session::{Session, SessionEvent, SessionOptions};

/// The session settings from the configuration (`LIFTOFF_PROBE_INTERVAL`,
/// `LIFTOFF_FAILBACK_AFTER`, `LIFTOFF_RESEND_AFTER`).
pub fn session_options(config: &Config, worker_id: &str) -> SessionOptions {
    let mut o = SessionOptions::new(worker_id.to_string());
    o.failback_after = config.failback_after;
    o.probe_every = config.probe_interval;
    o.resend_after = config.resend_after;
    o
}

/// A transport built from the configuration, with the session settings,
/// ready to start (built before the rest of start-up so that a bad token or
/// TLS setting fails first).
pub struct Prepared {
    transport: Box<dyn session::Transport>,
    options: SessionOptions,
    primary: String,
}

impl Prepared {
    /// The primary region's name (the first in the token).
    pub fn primary_region(&self) -> &str {
        &self.primary
    }

    /// Starts the session over the transport.
    pub fn start(
        self,
        outbox: Outbox,
        hello: WorkerMsg,
    ) -> Result<(Session, smol::channel::Receiver<SessionEvent>), String> {
        Session::start(self.options, self.transport, outbox, hello).map_err(|e| e.to_string())
    }
}

/// Builds the configured transport (MQTT: the only one so far) and the
/// session settings.
pub fn prepare(config: &Config, identity: &Identity, worker_id: &str) -> Result<Prepared, String> {
    let settings = mqtt::MqttSettings::from_config(config, identity, worker_id)?;
    let primary = settings
        .brokers
        .first()
        .map(|(b, _)| b.region.clone())
        .ok_or("the token names no broker: generate a new token for this pool")?;
    Ok(Prepared {
        transport: Box::new(mqtt::MqttTransport::new(settings)),
        options: session_options(config, worker_id),
        primary,
    })
}
