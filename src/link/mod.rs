//! The control-plane link: `protocol` (messages, topics, limits), `outbox`
//! (durable, acked events), `session` (transport-neutral delivery: outbox,
//! acks, re-sends, regional failover and fail-back, `hello`/`status`) and
//! the transports behind its [`session::Transport`] trait: `mqtt` (rumqttc,
//! TLS, liveness) and `poll` (HTTPS long-poll with mutual TLS). `probe`
//! checks a broker without a session (`liftoff check`, fail-back probes);
//! `poll::check_endpoint` does the same for a long-poll endpoint.
//!
//! Call order: [`prepare`] (picks and builds the transport from the
//! configuration), then [`Prepared::start`] (the session over it). The
//! worker talks only to the returned [`session::Session`].

pub mod mqtt;
pub mod outbox;
pub mod poll;
pub mod probe;
pub mod protocol;
pub mod session;

use crate::config::{CommsProtocol, Config};
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
    protocol: CommsProtocol,
}

impl Prepared {
    /// `mqtt` or `poll`.
    pub fn transport_name(&self) -> &'static str {
        match self.protocol {
            CommsProtocol::Mqtt => "mqtt",
            CommsProtocol::Poll => "poll",
        }
    }

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

/// The binding this worker speaks: `SPACELIFT_WORKER_COMMS_PROTOCOL` when
/// set; otherwise `poll` when the token has endpoints or
/// `SPACELIFT_WORKER_COMMS_URL` is set (the vendor's choice since 2027),
/// else `mqtt`. An error when the chosen binding has nowhere to connect.
pub fn comms_protocol(config: &Config) -> Result<CommsProtocol, String> {
    let token = config.token.as_ref().ok_or("SPACELIFT_TOKEN is not set")?;
    let can_poll = !token.endpoints.is_empty() || config.comms_url.is_some();
    let chosen = config.comms_protocol.unwrap_or(if can_poll {
        CommsProtocol::Poll
    } else {
        CommsProtocol::Mqtt
    });
    match chosen {
        CommsProtocol::Poll if !can_poll => Err("SPACELIFT_WORKER_COMMS_PROTOCOL is poll, but the token names no endpoint: set SPACELIFT_WORKER_COMMS_URL=https://… or generate a new token with endpoints".into()),
        CommsProtocol::Mqtt if token.brokers.is_empty() => Err("SPACELIFT_WORKER_COMMS_PROTOCOL is mqtt, but the token names no broker: set SPACELIFT_WORKER_COMMS_PROTOCOL=poll or generate a new token with brokers".into()),
        p => Ok(p),
    }
}

/// Builds the configured transport (see [`comms_protocol`]) and the
/// session settings.
pub fn prepare(config: &Config, identity: &Identity, worker_id: &str) -> Result<Prepared, String> {
    let protocol = comms_protocol(config)?;
    let (transport, primary): (Box<dyn session::Transport>, Option<String>) = match protocol {
        CommsProtocol::Mqtt => {
            let settings = mqtt::MqttSettings::from_config(config, identity, worker_id)?;
            let primary = settings.brokers.first().map(|(b, _)| b.region.clone());
            (Box::new(mqtt::MqttTransport::new(settings)), primary)
        }
        CommsProtocol::Poll => {
            let settings = poll::PollSettings::from_config(config, identity, worker_id)
                .map_err(|e| e.to_string())?;
            let primary = settings.endpoints.first().map(|e| e.region.clone());
            (Box::new(poll::PollTransport::new(settings)), primary)
        }
    };
    let primary = primary.ok_or("the token names no broker: generate a new token for this pool")?;
    Ok(Prepared {
        transport,
        options: session_options(config, worker_id),
        primary,
        protocol,
    })
}
