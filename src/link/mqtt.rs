//! The MQTT transport: rumqttc's sync `Client`/`Connection`, driven by the
//! session's thread (see [`super::session`]); TLS through our own rustls
//! `ClientConfig`; liveness and the rumqttc traps. Everything
//! transport-neutral (outbox, acks, re-sends, failover, status) is the
//! session's.
//!
//! Call order: [`MqttSettings::from_config`] (or build one), then
//! [`MqttTransport::new`], then hand it to [`super::session::Session::start`],
//! which calls the [`Transport`] methods.
//!
//! Liveness (docs/protocol.md, "Keepalive"): the MQTT keepalive declared in
//! CONNECT is `P` = half of [`MqttSettings::keepalive`] rounded down to whole
//! seconds (at least 1 s); rumqttc sends a PINGREQ every `P`. The connection
//! is declared dead when a PINGREQ is still unanswered when the next one is
//! due (rumqttc's rule: `P` to `2P` after the last packet received), when
//! nothing at all was received for one full keepalive, or when publishes
//! were not acknowledged for one full keepalive. So a silent broker is
//! noticed at most one keepalive after its last packet.
//!
//! How the rumqttc traps are handled:
//! - a new `Client`/`Connection` is built for every connection attempt, so
//!   no state (pending packets, packet-id collisions) survives a reconnect;
//!   what must survive is in the session's outbox, re-sent after every
//!   CONNACK (session_present is always 0: clean sessions);
//! - no progress (publishes not acknowledged by the broker for one
//!   keepalive) is treated as a dead connection and the client is rebuilt:
//!   this also breaks the collision livelock (#1014); besides, at most
//!   [`MqttSettings::window`] (32) publishes are in flight, below rumqttc's
//!   100 packet ids, so ids do not wrap onto unacked ones;
//! - rumqttc has no backoff: the session spaces attempts;
//! - the 10 KiB default packet size is raised (see [`MAX_PACKET`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, Connection, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport as RumqttcTransport,
};
use rustls::ClientConfig;

use super::probe::{self, ProbeErrorKind};
use super::protocol::{self, Topics};
use super::session::{ConnectError, Lost, PublishError, Transport};
use crate::config::{Broker, Config};
use crate::identity::Identity;

/// Largest MQTT packet rumqttc will send or accept: room for a
/// [`protocol::MAX_PAYLOAD`] payload plus topic and headers, and for brokers
/// whose own limit is a little above the payload limit. Payloads over
/// [`protocol::MAX_PAYLOAD`] are refused by [`protocol::parse_command`].
pub const MAX_PACKET: usize = 256 * 1024;

/// What the MQTT transport needs. [`MqttSettings::new`] gives production
/// defaults.
#[derive(Clone)]
pub struct MqttSettings {
    /// Ordered, primary first; one TLS configuration per broker (ALPN).
    pub brokers: Vec<(Broker, Arc<ClientConfig>)>,
    pub client_id: String,
    pub topics: Topics,
    /// A dead connection is detected within this (≥ 2 s).
    pub keepalive: Duration,
    /// Most QoS 1 publishes in flight.
    pub window: usize,
}

impl MqttSettings {
    pub fn new(
        brokers: Vec<(Broker, Arc<ClientConfig>)>,
        client_id: String,
        topics: Topics,
    ) -> MqttSettings {
        MqttSettings {
            brokers,
            client_id,
            topics,
            keepalive: Duration::from_secs(30),
            window: 32,
        }
    }

    /// The brokers of the token, each with its TLS configuration, the
    /// worker's topics and client id, and `LIFTOFF_MQTT_KEEPALIVE`.
    pub fn from_config(
        config: &Config,
        identity: &Identity,
        worker_id: &str,
    ) -> Result<MqttSettings, String> {
        let token = config.token.as_ref().ok_or("SPACELIFT_TOKEN is not set")?;
        let mut brokers = Vec::new();
        for b in &token.brokers {
            let alpn = b.needs_alpn().then_some(&b"x-amzn-mqtt-ca"[..]);
            let tls = identity.client_config(token, &config.additional_root_cas, alpn)?;
            brokers.push((b.clone(), tls));
        }
        let topics = Topics::new(&token.namespace, &token.pool_id, worker_id)?;
        let client_id = protocol::client_id(&token.pool_id, worker_id)?;
        let mut s = MqttSettings::new(brokers, client_id, topics);
        s.keepalive = config.mqtt_keepalive.max(Duration::from_secs(2));
        Ok(s)
    }

    /// The MQTT keepalive declared in CONNECT: half of `keepalive`, whole
    /// seconds, at least 1 s.
    pub fn ping_every(&self) -> Duration {
        Duration::from_secs((self.keepalive / 2).as_secs().max(1))
    }
}

/// One live connection.
struct Conn {
    client: Client,
    connection: Connection,
    last_inbound: Instant,
    /// Publishes handed to rumqttc and not yet acked by the broker.
    in_flight: usize,
    /// When the broker last made progress on our publishes.
    progress_at: Instant,
}

/// The MQTT [`Transport`]. See the module documentation.
pub struct MqttTransport {
    settings: MqttSettings,
    conn: Option<Conn>,
}

impl MqttTransport {
    pub fn new(settings: MqttSettings) -> MqttTransport {
        MqttTransport {
            settings,
            conn: None,
        }
    }

    fn options(&self, index: usize, will: &[u8]) -> MqttOptions {
        let (broker, tls) = &self.settings.brokers[index];
        let mut o = MqttOptions::new(&self.settings.client_id, &broker.host, broker.port);
        o.set_keep_alive(self.settings.ping_every());
        o.set_clean_session(true);
        o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        o.set_inflight(100);
        o.set_request_channel_capacity(self.settings.window + 16);
        o.set_transport(RumqttcTransport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
        if !will.is_empty() {
            o.set_last_will(LastWill::new(
                &self.settings.topics.outbound,
                will.to_vec(),
                QoS::AtLeastOnce,
                false,
            ));
        }
        o
    }

    /// Drops the connection without DISCONNECT (the broker sends the will).
    fn drop_conn(&mut self, reason: String) -> Lost {
        self.conn = None;
        Lost(reason)
    }

    /// The keepalive and no-progress rules.
    fn check_health(&mut self) -> Result<(), Lost> {
        let Some(c) = self.conn.as_ref() else {
            return Err(Lost("not connected".into()));
        };
        let now = Instant::now();
        let k = self.settings.keepalive;
        if now.duration_since(c.last_inbound) > k {
            let reason = format!(
                "nothing received from the broker for {} s (keepalive)",
                k.as_secs()
            );
            return Err(self.drop_conn(reason));
        }
        if c.in_flight > 0 && now.duration_since(c.progress_at) > k {
            let reason = format!(
                "the broker acknowledged none of {} publishes for {} s; rebuilding the client",
                c.in_flight,
                k.as_secs()
            );
            return Err(self.drop_conn(reason));
        }
        Ok(())
    }
}

impl Transport for MqttTransport {
    fn regions(&self) -> Vec<String> {
        self.settings
            .brokers
            .iter()
            .map(|(b, _)| b.region.clone())
            .collect()
    }

    fn connect(&mut self, region: usize, will: &[u8]) -> Result<(), ConnectError> {
        self.conn = None;
        if region >= self.settings.brokers.len() {
            return Err(ConnectError::Failed(format!("no broker number {region}")));
        }
        let (client, mut connection) =
            Client::new(self.options(region, will), self.settings.window + 16);
        let mut net = connection.eventloop.network_options();
        net.set_connection_timeout(self.settings.keepalive.as_secs().clamp(2, 10));
        connection.eventloop.set_network_options(net);
        // The first poll performs TCP, TLS and CONNECT/CONNACK (bounded by the
        // connection timeout); it must not be cut short.
        match connection.recv() {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                client
                    .try_subscribe(&self.settings.topics.inbound, QoS::AtLeastOnce)
                    .map_err(|e| ConnectError::Failed(format!("cannot subscribe: {e}")))?;
                let now = Instant::now();
                self.conn = Some(Conn {
                    client,
                    connection,
                    last_inbound: now,
                    in_flight: 0,
                    progress_at: now,
                });
                Ok(())
            }
            Ok(Ok(other)) => Err(ConnectError::Failed(format!(
                "expected CONNACK, got {other:?}"
            ))),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(ConnectError::Failed("the MQTT client stopped".into())),
        }
    }

    fn publish(&mut self, payload: Vec<u8>) -> Result<(), PublishError> {
        let window = self.settings.window;
        let outbound = &self.settings.topics.outbound;
        let Some(c) = self.conn.as_mut() else {
            return Err(PublishError::NotConnected);
        };
        if c.in_flight >= window {
            return Err(PublishError::Full);
        }
        c.client
            .try_publish(outbound, QoS::AtLeastOnce, false, payload)
            .map_err(|_| PublishError::Full)?;
        if c.in_flight == 0 {
            c.progress_at = Instant::now();
        }
        c.in_flight += 1;
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.in_flight)
    }

    fn next(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, Lost> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(Lost("not connected".into()));
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = match conn
                .connection
                .recv_timeout(left.max(Duration::from_millis(1)))
            {
                Ok(Ok(ev)) => ev,
                Ok(Err(e)) => {
                    let reason = match describe(&e) {
                        ConnectError::CertificateRejected(r) | ConnectError::Failed(r) => r,
                    };
                    return Err(self.drop_conn(reason));
                }
                Err(rumqttc::RecvTimeoutError::Timeout) => {
                    self.check_health()?;
                    return Ok(None);
                }
                Err(rumqttc::RecvTimeoutError::Disconnected) => {
                    return Err(self.drop_conn("the MQTT client stopped".into()));
                }
            };
            let now = Instant::now();
            if let Event::Incoming(p) = ev {
                conn.last_inbound = now;
                match p {
                    Packet::PubAck(_) => {
                        conn.in_flight = conn.in_flight.saturating_sub(1);
                        conn.progress_at = now;
                    }
                    Packet::SubAck(ack)
                        if ack
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
                    {
                        let topic = &self.settings.topics.inbound;
                        let reason = format!(
                            "the broker refused the subscription to {topic}: check the broker's policy for this pool's certificate"
                        );
                        return Err(self.drop_conn(reason));
                    }
                    Packet::Publish(p) if p.topic == self.settings.topics.inbound => {
                        self.check_health()?;
                        return Ok(Some(p.payload.to_vec()));
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                self.check_health()?;
                return Ok(None);
            }
        }
    }

    fn disconnect(&mut self) {
        let Some(mut c) = self.conn.take() else {
            return;
        };
        let _ = c.client.try_disconnect();
        // Let rumqttc write the DISCONNECT.
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            match c.connection.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
    }

    fn probe(&self, region: usize) -> Box<dyn FnOnce() -> bool + Send> {
        let Some((broker, tls)) = self.settings.brokers.get(region).cloned() else {
            return Box::new(|| false);
        };
        let id = format!("{}-probe", self.settings.client_id);
        let id = if id.len() > protocol::MAX_CLIENT_ID {
            protocol::ulid()
        } else {
            id
        };
        let timeout = self.settings.keepalive.min(Duration::from_secs(10));
        Box::new(move || probe::probe(&broker, tls, &id, timeout).is_ok())
    }
}

/// A short reason, and whether the broker refused our certificate.
fn describe(e: &ConnectionError) -> ConnectError {
    let kind = match e {
        ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::NotAuthorized
            | rumqttc::ConnectReturnCode::BadUserNamePassword,
        ) => Some(ProbeErrorKind::CertificateRejected),
        _ => {
            // rustls errors arrive wrapped in I/O, state or TLS errors: walk
            // the chain.
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
            let mut found = None;
            while let Some(err) = cur {
                if let Some(io) = err.downcast_ref::<std::io::Error>() {
                    found = Some(probe::classify_io(io));
                    break;
                }
                if let Some(t) = err.downcast_ref::<rustls::Error>() {
                    found = Some(probe::classify_tls(t));
                    break;
                }
                cur = err.source();
            }
            found
        }
    };
    let text = e.to_string();
    match kind {
        Some(ProbeErrorKind::CertificateRejected) => ConnectError::CertificateRejected(format!(
            "the broker refused this pool's certificate ({text})"
        )),
        Some(ProbeErrorKind::TlsVerification) => ConnectError::Failed(format!(
            "the broker's certificate is not trusted ({text}): check the token's CA and ADDITIONAL_ROOT_CAS"
        )),
        _ => ConnectError::Failed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(keepalive: Duration) -> MqttSettings {
        let topics = Topics::new("spacelift", "P", "W").unwrap();
        let mut s = MqttSettings::new(Vec::new(), "P-W".into(), topics);
        s.keepalive = keepalive;
        s
    }

    #[test]
    fn two_pings_fit_in_one_keepalive() {
        // a silent broker is noticed at most one keepalive after its last
        // packet: rumqttc gives up on a ping when the next one is due
        for ms in (2000..=300_000).step_by(250) {
            let k = Duration::from_millis(ms);
            let p = settings(k).ping_every();
            assert!(p >= Duration::from_secs(1), "{k:?}");
            assert_eq!(p.subsec_nanos(), 0, "whole seconds in CONNECT");
            assert!(2 * p <= k, "{k:?}: ping every {p:?}");
        }
        assert_eq!(
            settings(Duration::from_secs(30)).ping_every(),
            Duration::from_secs(15)
        );
    }
}
