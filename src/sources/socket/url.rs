//! `--socket URL`: where to listen and how frames are cut.
//!
//! - `unix:///run/shipper/log.sock`: a stream socket at a path; `unixgram:///path` a datagram one.
//! - `unix://@name`, `unixgram://@name`: Linux abstract names (no file; shared by the containers
//!   of a pod, which share a network namespace).
//! - `tcp://127.0.0.1:5140`, `udp://127.0.0.1:5140` (`localhost` is 127.0.0.1). Only loopback
//!   addresses unless remote senders are allowed (`--socket-allow-remote`).
//! - `?framing=auto|python|syslog|lines` after any of them (default `auto`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use super::framing::Framing;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    UnixAbstract(String),
    Unixgram(PathBuf),
    UnixgramAbstract(String),
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

impl Endpoint {
    /// Whether senders write whole datagrams (one record each) rather than a byte stream.
    pub fn is_datagram(&self) -> bool {
        matches!(
            self,
            Endpoint::Unixgram(_) | Endpoint::UnixgramAbstract(_) | Endpoint::Udp(_)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketUrl {
    pub endpoint: Endpoint,
    pub framing: Framing,
    /// The URL as the user wrote it: the metrics label and the log field.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid socket {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

impl SocketUrl {
    /// Refuse a TCP or UDP address that is not loopback unless remote senders are allowed.
    pub fn check_remote(&self, allow_remote: bool) -> Result<(), UrlError> {
        let addr = match &self.endpoint {
            Endpoint::Tcp(addr) | Endpoint::Udp(addr) => addr,
            _ => return Ok(()),
        };
        if allow_remote || addr.ip().is_loopback() {
            return Ok(());
        }
        Err(UrlError {
            url: self.text.clone(),
            reason: format!(
                "{} is not a loopback address; a sidecar's senders are in its pod, so listen on \
                 127.0.0.1 (or pass --socket-allow-remote to accept senders from other hosts)",
                addr.ip()
            ),
        })
    }
}

impl FromStr for SocketUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| UrlError {
            url: text.to_string(),
            reason,
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            error("expected SCHEME://ADDRESS, with scheme unix, unixgram, tcp or udp".into())
        })?;
        let (address, query) = match rest.split_once('?') {
            Some((address, query)) => (address, Some(query)),
            None => (rest, None),
        };
        let mut framing = Framing::Auto;
        if let Some(query) = query {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("framing", value)) => {
                        framing = value
                            .parse()
                            .map_err(|e: super::framing::FramingError| error(e.to_string()))?;
                    }
                    _ => {
                        return Err(error(format!(
                            "unknown parameter {pair:?}: the only one is framing=auto|python|syslog|lines"
                        )));
                    }
                }
            }
        }
        let unix_name = |address: &str| -> Result<Result<PathBuf, String>, UrlError> {
            if let Some(name) = address.strip_prefix('@') {
                if name.is_empty() || name.len() > 107 {
                    return Err(error("an abstract name has 1 to 107 bytes".into()));
                }
                return Ok(Err(name.to_string()));
            }
            if !address.starts_with('/') {
                return Err(error(
                    "a unix socket path must be absolute (unix:///run/shipper/log.sock) or an \
                     abstract name (unix://@name)"
                        .into(),
                ));
            }
            // sun_path holds 108 bytes with the terminating NUL.
            if address.len() > 107 {
                return Err(error("a unix socket path has at most 107 bytes".into()));
            }
            Ok(Ok(PathBuf::from(address)))
        };
        let inet = |address: &str| -> Result<SocketAddr, UrlError> {
            let address = match address.strip_prefix("localhost:") {
                Some(port) => format!("127.0.0.1:{port}"),
                None => address.to_string(),
            };
            let addr: SocketAddr = address.parse().map_err(|_| {
                error("expected IP:PORT, such as 127.0.0.1:5140 or [::1]:5140".into())
            })?;
            if addr.port() == 0 {
                return Err(error("the port must not be 0".into()));
            }
            Ok(addr)
        };
        let endpoint = match scheme {
            "unix" => match unix_name(address)? {
                Ok(path) => Endpoint::Unix(path),
                Err(name) => Endpoint::UnixAbstract(name),
            },
            "unixgram" => match unix_name(address)? {
                Ok(path) => Endpoint::Unixgram(path),
                Err(name) => Endpoint::UnixgramAbstract(name),
            },
            "tcp" => Endpoint::Tcp(inet(address)?),
            "udp" => Endpoint::Udp(inet(address)?),
            other => {
                return Err(error(format!(
                    "unknown scheme {other:?}: expected unix, unixgram, tcp or udp"
                )));
            }
        };
        Ok(SocketUrl {
            endpoint,
            framing,
            text: text.to_string(),
        })
    }
}

impl fmt::Display for SocketUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The loopback address `localhost` stands for.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SocketUrl, String> {
        text.parse::<SocketUrl>().map_err(|e| e.to_string())
    }

    #[test]
    fn every_scheme_parses() {
        assert_eq!(
            parse("unix:///run/shipper/log.sock").unwrap().endpoint,
            Endpoint::Unix("/run/shipper/log.sock".into())
        );
        assert_eq!(
            parse("unixgram:///tmp/x.sock?framing=syslog").unwrap(),
            SocketUrl {
                endpoint: Endpoint::Unixgram("/tmp/x.sock".into()),
                framing: Framing::Syslog,
                text: "unixgram:///tmp/x.sock?framing=syslog".into(),
            }
        );
        assert_eq!(
            parse("unix://@shipper").unwrap().endpoint,
            Endpoint::UnixAbstract("shipper".into())
        );
        assert_eq!(
            parse("unixgram://@shipper").unwrap().endpoint,
            Endpoint::UnixgramAbstract("shipper".into())
        );
        assert_eq!(
            parse("tcp://localhost:5140").unwrap().endpoint,
            Endpoint::Tcp(SocketAddr::new(LOCALHOST, 5140))
        );
        assert_eq!(
            parse("udp://[::1]:5140?framing=python").unwrap().framing,
            Framing::Python
        );
        assert!(parse("udp://[::1]:5140").unwrap().endpoint.is_datagram());
        assert!(!parse("tcp://127.0.0.1:1").unwrap().endpoint.is_datagram());
    }

    #[test]
    fn mistakes_are_explained() {
        for (url, wanted) in [
            ("/run/log.sock", "SCHEME://"),
            ("unix://relative.sock", "absolute"),
            ("tcp://127.0.0.1", "IP:PORT"),
            ("tcp://127.0.0.1:0", "port"),
            ("http://127.0.0.1:80", "unknown scheme"),
            ("unix:///x.sock?framing=xml", "xml"),
            ("unix:///x.sock?mode=0600", "unknown parameter"),
            ("unix://@", "abstract name"),
        ] {
            let error = parse(url).unwrap_err();
            assert!(error.contains(wanted), "{url}: {error}");
        }
        let long = format!("unix:///{}", "a".repeat(120));
        assert!(parse(&long).unwrap_err().contains("107"));
    }

    #[test]
    fn remote_addresses_need_consent() {
        let url = parse("tcp://0.0.0.0:5140").unwrap();
        let error = url.check_remote(false).unwrap_err().to_string();
        assert!(error.contains("--socket-allow-remote"), "{error}");
        assert!(url.check_remote(true).is_ok());
        assert!(
            parse("udp://127.0.0.2:514")
                .unwrap()
                .check_remote(false)
                .is_ok()
        );
        assert!(parse("unix:///x").unwrap().check_remote(false).is_ok());
    }
}
