//! A one-shot broker probe: DNS, TCP, TLS handshake with the pool's client
//! certificate, MQTT 3.1.1 CONNECT and CONNACK, then DISCONNECT (so no last
//! will fires). Used by `liftoff check` and by the link to decide when the
//! primary region is healthy again. Blocking; call it from a thread of its
//! own. Errors are classified precisely ([`ProbeErrorKind`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig, ClientConnection, StreamOwned};

use crate::config::Broker;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeErrorKind {
    /// The host name did not resolve.
    Dns,
    /// No TCP connection (refused, unreachable, timed out).
    Tcp,
    /// The HTTP proxy refused or failed the CONNECT tunnel.
    Proxy,
    /// We did not trust the broker's certificate (wrong CA, name mismatch).
    TlsVerification,
    /// The broker refused our certificate (pool reset or revoked).
    CertificateRejected,
    /// Another TLS failure (protocol, ALPN, …).
    Tls,
    /// The broker answered CONNECT with a refusal or something else.
    Mqtt,
    /// The endpoint answered with an unexpected HTTP status or body.
    Http,
    /// Connected, but no answer within the time limit.
    Timeout,
}

impl ProbeErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeErrorKind::Dns => "DNS",
            ProbeErrorKind::Tcp => "TCP",
            ProbeErrorKind::Proxy => "proxy",
            ProbeErrorKind::TlsVerification => "TLS verification",
            ProbeErrorKind::CertificateRejected => "certificate rejected",
            ProbeErrorKind::Tls => "TLS",
            ProbeErrorKind::Mqtt => "MQTT",
            ProbeErrorKind::Http => "HTTP",
            ProbeErrorKind::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    pub kind: ProbeErrorKind,
    pub detail: String,
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)
    }
}

/// TLS alerts a broker sends when it refuses the client certificate.
pub fn alert_rejects_certificate(alert: &AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
    )
}

/// Classifies a rustls error.
pub fn classify_tls(e: &rustls::Error) -> ProbeErrorKind {
    match e {
        rustls::Error::AlertReceived(a) if alert_rejects_certificate(a) => {
            ProbeErrorKind::CertificateRejected
        }
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            ProbeErrorKind::TlsVerification
        }
        _ => ProbeErrorKind::Tls,
    }
}

/// Classifies an I/O error from a TLS stream (rustls errors travel inside).
pub fn classify_io(e: &io::Error) -> ProbeErrorKind {
    if let Some(inner) = e.get_ref()
        && let Some(tls) = inner.downcast_ref::<rustls::Error>()
    {
        return classify_tls(tls);
    }
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ProbeErrorKind::Timeout,
        _ => ProbeErrorKind::Tcp,
    }
}

fn err(kind: ProbeErrorKind, detail: impl Into<String>) -> ProbeError {
    ProbeError {
        kind,
        detail: detail.into(),
    }
}

/// The MQTT 3.1.1 CONNECT packet: clean session, no will, `keepalive` s.
pub fn connect_packet(client_id: &str, keepalive: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + client_id.len());
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02]);
    body.extend_from_slice(&keepalive.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut out = vec![0x10];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

/// Connects to `broker` as `client_id` and disconnects. Returns the time
/// the TLS handshake plus CONNECT took.
pub fn probe(
    broker: &Broker,
    tls: Arc<ClientConfig>,
    client_id: &str,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    let addrs: Vec<SocketAddr> = (broker.host.as_str(), broker.port)
        .to_socket_addrs()
        .map_err(|e| {
            err(
                ProbeErrorKind::Dns,
                format!("cannot resolve {}: {e}", broker.host),
            )
        })?
        .collect();
    if addrs.is_empty() {
        return Err(err(
            ProbeErrorKind::Dns,
            format!("{} resolves to no address", broker.host),
        ));
    }
    let mut last = None;
    let mut tcp = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(format!("{a}: {e}")),
        }
    }
    let Some(tcp) = tcp else {
        return Err(err(
            ProbeErrorKind::Tcp,
            format!(
                "cannot connect to {}:{} ({}): check firewalls allow outbound TCP to it",
                broker.host,
                broker.port,
                last.unwrap_or_default()
            ),
        ));
    };
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(broker.host.clone()).map_err(|e| {
        err(
            ProbeErrorKind::Dns,
            format!("{:?} is not a valid host name: {e}", broker.host),
        )
    })?;
    let conn = ClientConnection::new(tls, name)
        .map_err(|e| err(classify_tls(&e), format!("TLS setup: {e}")))?;
    let mut stream = StreamOwned::new(conn, tcp);
    let tls_err = |e: io::Error| {
        let kind = classify_io(&e);
        let hint = match kind {
            ProbeErrorKind::CertificateRejected => {
                ": the broker refused this pool's certificate (was the worker pool reset?)"
            }
            ProbeErrorKind::TlsVerification => {
                ": the broker's certificate is not trusted (check the token's CA, ADDITIONAL_ROOT_CAS and the host name)"
            }
            _ => "",
        };
        err(kind, format!("{e}{hint}"))
    };
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).map_err(tls_err)?;
    }
    stream
        .write_all(&connect_packet(client_id, 30))
        .map_err(tls_err)?;
    stream.flush().map_err(tls_err)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            err(
                ProbeErrorKind::Mqtt,
                "the broker closed the connection after CONNECT (it refused this client or its certificate)",
            )
        } else {
            tls_err(e)
        }
    })?;
    if connack[0] != 0x20 || connack[1] != 2 {
        return Err(err(
            ProbeErrorKind::Mqtt,
            format!("expected CONNACK, got bytes {connack:02x?}"),
        ));
    }
    match connack[3] {
        0 => {}
        4 | 5 => {
            return Err(err(
                ProbeErrorKind::CertificateRejected,
                format!("CONNACK refused with code {}: not authorized", connack[3]),
            ));
        }
        rc => {
            return Err(err(
                ProbeErrorKind::Mqtt,
                format!("CONNACK refused with return code {rc}"),
            ));
        }
    }
    let took = start.elapsed();
    let _ = stream.write_all(&[0xE0, 0x00]);
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.conn.complete_io(&mut stream.sock);
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_is_mqtt_311() {
        let p = connect_packet("abc", 30);
        assert_eq!(
            p,
            vec![
                0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 3, b'a', b'b', b'c'
            ]
        );
        let long = connect_packet(&"x".repeat(200), 1);
        assert_eq!(&long[..3], &[0x10, (212 % 128) as u8 | 0x80, 1]);
    }

    #[test]
    fn classifies_alerts() {
        assert_eq!(
            classify_tls(&rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
            ProbeErrorKind::CertificateRejected
        );
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::BadCertificate),
        );
        assert_eq!(classify_io(&io), ProbeErrorKind::CertificateRejected);
        assert_eq!(
            classify_io(&io::Error::from(io::ErrorKind::ConnectionRefused)),
            ProbeErrorKind::Tcp
        );
    }
}
