//! The MQTT transport of the plane: one rumqttc client per configured
//! broker (region), with the plane's own client certificate
//! (`plane.json` `mqtt`), subscribed to `{ns}/writeonly/+/+` (every pool,
//! every worker) in every region. Each message goes to
//! [`Plane::record`] with the region it came from (de-duplication, acks,
//! effects are the dispatcher's); commands for a worker are published to
//! `{ns}/readonly/{pool}/{worker}` in the region it last spoke from
//! ([`Outbound`]).
//!
//! Call order: `serve` calls [`start`] after the plane is built when
//! `brokers` and `mqtt` are configured.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::config::MqttClient;
use super::dispatch::{Outbound, Plane};
use super::{Error, Result};
use crate::link::protocol::MAX_PAYLOAD;

struct Publisher {
    namespace: String,
    clients: HashMap<String, Client>,
}

impl Outbound for Publisher {
    fn publish(&self, region: &str, pool: &str, worker: &str, body: &str) {
        if body.len() > MAX_PAYLOAD {
            tracing::error!(
                worker,
                bytes = body.len(),
                "a command is over the MQTT payload limit; not sent"
            );
            return;
        }
        let topic = format!("{}/readonly/{pool}/{worker}", self.namespace);
        // The worker's region, else every region (the worker de-duplicates).
        let targets: Vec<&Client> = match self.clients.get(region) {
            Some(c) => vec![c],
            None => self.clients.values().collect(),
        };
        for c in targets {
            if let Err(e) = c.try_publish(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                body.as_bytes().to_vec(),
            ) {
                tracing::warn!(worker, region, error = %e, "cannot publish a command");
            }
        }
    }
}

/// `mqtts://host:port` → (host, port).
fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("mqtts://")
        .ok_or_else(|| Error::Config(format!("broker {url:?} is not mqtts://host:port")))?;
    let (h, p) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .unwrap_or((rest, "8883"));
    let port = p
        .parse()
        .map_err(|_| Error::Config(format!("broker {url:?} has a bad port")))?;
    Ok((h.to_string(), port))
}

fn tls(m: &MqttClient) -> Result<Arc<rustls::ClientConfig>> {
    crate::identity::install_crypto_provider();
    let read = |p: &std::path::Path| {
        std::fs::read(p)
            .map_err(|e| Error::Config(format!("mqtt: cannot read {}: {e}", p.display())))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(&m.ca)?) {
        let c = c.map_err(|e| Error::Config(format!("mqtt: ca is not PEM: {e}")))?;
        roots
            .add(c)
            .map_err(|e| Error::Config(format!("mqtt: ca unusable: {e}")))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&m.cert)?)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Config(format!("mqtt: cert is not PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&m.key)?)
        .map_err(|e| Error::Config(format!("mqtt: key is not PEM: {e}")))?;
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| Error::Config(format!("mqtt: cert and key do not fit: {e}")))?;
    Ok(Arc::new(cfg))
}

/// Connects to every broker and installs the publisher in `plane`.
pub fn start(plane: &Arc<Plane>) -> Result<()> {
    let c = &plane.data.config;
    let Some(m) = &c.mqtt else { return Ok(()) };
    if c.brokers.is_empty() {
        return Ok(());
    }
    let tls = tls(m)?;
    let mut clients = HashMap::new();
    for b in &c.brokers {
        let (host, port) = host_port(&b.url)?;
        let mut o = MqttOptions::new(
            format!("liftoff-plane-{}-{}", b.region, std::process::id()),
            host,
            port,
        );
        o.set_keep_alive(Duration::from_secs(15));
        o.set_max_packet_size(MAX_PAYLOAD + 4096, MAX_PAYLOAD + 4096);
        o.set_clean_session(true);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
        let (client, mut conn) = Client::new(o, 4096);
        clients.insert(b.region.clone(), client.clone());
        let filter = format!("{}/writeonly/+/+", c.namespace);
        let region = b.region.clone();
        let plane = plane.clone();
        std::thread::Builder::new()
            .name(format!("plane-mqtt-{region}"))
            .spawn(move || loop {
                match conn.recv_timeout(Duration::from_millis(500)) {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        tracing::info!(region, "connected to the broker");
                        let _ = client.try_subscribe(&filter, QoS::AtLeastOnce);
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        let parts: Vec<&str> = p.topic.split('/').collect();
                        let [_, _, pool, worker] = parts.as_slice() else { continue };
                        if p.payload.len() > MAX_PAYLOAD {
                            continue;
                        }
                        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                            tracing::warn!(worker, "skipped a message that is not JSON");
                            continue;
                        };
                        if !matches!(plane.store.pool(pool), Ok(Some(_))) {
                            continue;
                        }
                        if let Err(e) = plane.record(pool, worker, "mqtt", &region, &[msg]) {
                            tracing::error!(worker, error = %e, "cannot record a message");
                        }
                    }
                    Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(region, error = %e, "broker connection lost; reconnecting");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the MQTT thread: {e}")))?;
    }
    *plane.mqtt.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Publisher {
        namespace: c.namespace.clone(),
        clients,
    }));
    Ok(())
}
