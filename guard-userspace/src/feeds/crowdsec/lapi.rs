//! The CrowdSec Local API client: the bouncer's decision stream (key in `X-Api-Key`), over
//! HTTP or HTTPS (the system's roots of Mozilla's list, plus `ca_file`). Every failure is typed
//! and says what to check; the key never appears in a message.

use std::{io::Read, path::Path, sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, pem::PemObject};

use crate::config::crowdsec::Crowdsec;

/// The largest answer read: a million decisions of about 200 bytes each.
const MAX_ANSWER: u64 = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LapiError {
    #[error("{what} {path}: {reason}")]
    KeyFile {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("the LAPI at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the LAPI at {url} refused the bouncer key (HTTP 403): check `bouncer_key_file` against `cscli bouncers list`"
    )]
    Forbidden { url: String },
    #[error(
        "the LAPI at {url} refused machine `{machine}` (HTTP {status}): check `machine_password_file`, and `cscli machines list` (a machine must be validated)"
    )]
    Login {
        url: String,
        machine: String,
        status: u16,
    },
    #[error(
        "the LAPI at {url} presented a certificate mailguard does not trust ({reason}): set `crowdsec.ca_file` to the CA that signed it"
    )]
    Certificate { url: String, reason: String },
    #[error("the LAPI at {url} did not answer within {seconds} s (`crowdsec.timeout`)")]
    Slow { url: String, seconds: u64 },
    #[error("the LAPI at {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the LAPI at {url} answered more than {} MiB", MAX_ANSWER >> 20)]
    TooLarge { url: String },
    #[error("the LAPI at {url}: {reason}")]
    Garbage { url: String, reason: String },
}

/// Reads a secret (`what`: the bouncer key file, the machine password file): the file's first
/// line, trimmed.
pub fn read_key(path: &Path, what: &'static str) -> Result<String, LapiError> {
    let err = |reason: String| LapiError::KeyFile {
        what,
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let key = text.lines().next().unwrap_or("").trim().to_string();
    if key.is_empty() {
        return Err(err(
            "it is empty (put the key `cscli bouncers add` printed, or the machine's password, in it)"
                .into(),
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err("the key has characters no key has".into()));
    }
    Ok(key)
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, LapiError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let err = |reason: String| LapiError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| err(e.to_string()))?;
        }
    }
    // The one crypto provider built in (ring) is the default.
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn http_agent(config: &Crowdsec) -> Result<ureq::Agent, LapiError> {
    let tls = tls_config(config.ca_file.as_deref())?;
    Ok(ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(config.timeout))
        .tls_config(Arc::new(tls))
        .user_agent(concat!("mailguard/", env!("CARGO_PKG_VERSION")))
        .build())
}

fn transport(url: &str, e: ureq::Error) -> LapiError {
    match e {
        ureq::Error::Status(status, _) => LapiError::Status {
            url: url.to_string(),
            status,
        },
        ureq::Error::Transport(t) => unreachable(url, &t),
    }
}

/// A request that got no answer: a certificate not trusted is named as such, anything else
/// (refused, no route, a name that does not resolve) is `Unreachable`.
fn unreachable(url: &str, t: &ureq::Transport) -> LapiError {
    const CERTIFICATE: &str = "invalid peer certificate: ";
    let reason = t.to_string();
    match reason.find(CERTIFICATE) {
        Some(at) => LapiError::Certificate {
            url: url.to_string(),
            reason: reason[at + CERTIFICATE.len()..].to_string(),
        },
        None => LapiError::Unreachable {
            url: url.to_string(),
            reason,
        },
    }
}

/// A client of one LAPI, as a machine (an agent): pushes alerts with decisions.
pub struct Machine {
    agent: ureq::Agent,
    url: String,
    id: String,
    password: String,
    token: Option<String>,
}

impl Machine {
    pub fn new(config: &Crowdsec) -> Result<Machine, LapiError> {
        Ok(Machine {
            agent: http_agent(config)?,
            url: config.lapi_url.clone(),
            id: config.machine_id.clone(),
            password: read_key(&config.machine_password_file, "machine password file")?,
            token: None,
        })
    }

    fn login(&mut self) -> Result<String, LapiError> {
        let body = serde_json::json!({
            "machine_id": self.id,
            "password": self.password,
            "scenarios": [],
        });
        let url = format!("{}/v1/watchers/login", self.url);
        let answer = match self.agent.post(&url).send_json(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(status @ (401 | 403), _)) => {
                return Err(LapiError::Login {
                    url: self.url.clone(),
                    machine: self.id.clone(),
                    status,
                });
            }
            Err(e) => return Err(transport(&self.url, e)),
        };
        let v: serde_json::Value = answer.into_json().map_err(|e| LapiError::Garbage {
            url: self.url.clone(),
            reason: format!("login answer: {e}"),
        })?;
        let token = v["token"].as_str().ok_or_else(|| LapiError::Garbage {
            url: self.url.clone(),
            reason: "login answer without a token".into(),
        })?;
        self.token = Some(token.to_string());
        Ok(token.to_string())
    }

    /// Pushes `alerts` (`POST /v1/alerts`), logging in first when there is no token or the
    /// token was refused.
    pub fn push(&mut self, alerts: &[serde_json::Value]) -> Result<(), LapiError> {
        let url = format!("{}/v1/alerts", self.url);
        for attempt in 0..2 {
            let token = match &self.token {
                Some(t) => t.clone(),
                None => self.login()?,
            };
            match self
                .agent
                .post(&url)
                .set("Authorization", &format!("Bearer {token}"))
                .send_json(serde_json::Value::from(alerts.to_vec()))
            {
                Ok(_) => return Ok(()),
                Err(ureq::Error::Status(401 | 403, _)) if attempt == 0 => self.token = None,
                Err(e) => return Err(transport(&self.url, e)),
            }
        }
        Err(LapiError::Login {
            url: self.url.clone(),
            machine: self.id.clone(),
            status: 401,
        })
    }
}

/// A client of one LAPI, as a bouncer.
pub struct Lapi {
    agent: ureq::Agent,
    url: String,
    key: String,
    timeout: u64,
}

impl Lapi {
    pub fn new(config: &Crowdsec) -> Result<Lapi, LapiError> {
        let key = read_key(&config.bouncer_key_file, "bouncer key file")?;
        Ok(Lapi {
            agent: http_agent(config)?,
            url: config.lapi_url.clone(),
            key,
            timeout: config.timeout,
        })
    }

    /// One read of the decision stream: everything (`startup`), or what changed since this
    /// bouncer's last read. Returns the answer's body.
    pub fn stream(&self, startup: bool, config: &Crowdsec) -> Result<Vec<u8>, LapiError> {
        let url = format!("{}/v1/decisions/stream", self.url);
        let scopes: Vec<&str> = config.scopes.iter().map(|s| s.name()).collect();
        let mut request = self
            .agent
            .get(&url)
            .set("X-Api-Key", &self.key)
            .query("startup", if startup { "true" } else { "false" })
            .query("scopes", &scopes.join(","));
        if !config.origins.is_empty() {
            request = request.query("origins", &config.origins.join(","));
        }
        let response = match request.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(403, _)) => {
                return Err(LapiError::Forbidden {
                    url: self.url.clone(),
                });
            }
            Err(ureq::Error::Status(status, _)) => {
                return Err(LapiError::Status {
                    url: self.url.clone(),
                    status,
                });
            }
            Err(ureq::Error::Transport(t)) if t.to_string().contains("timed out") => {
                return Err(LapiError::Slow {
                    url: self.url.clone(),
                    seconds: self.timeout,
                });
            }
            Err(ureq::Error::Transport(t)) => return Err(unreachable(&self.url, &t)),
        };
        let mut body = Vec::new();
        response
            .into_reader()
            .take(MAX_ANSWER + 1)
            .read_to_end(&mut body)
            .map_err(|e| LapiError::Unreachable {
                url: self.url.clone(),
                reason: format!("reading the answer: {e}"),
            })?;
        if body.len() as u64 > MAX_ANSWER {
            return Err(LapiError::TooLarge {
                url: self.url.clone(),
            });
        }
        Ok(body)
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_first_line_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("mg-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "9ea6966917bd631d72411fe99939f02b\n").unwrap();
        assert_eq!(
            read_key(&path, "bouncer key file").unwrap(),
            "9ea6966917bd631d72411fe99939f02b"
        );
        std::fs::write(&path, "\n").unwrap();
        let e = read_key(&path, "bouncer key file").unwrap_err().to_string();
        assert!(e.contains("it is empty"), "{e}");
        let e = read_key(&dir.join("missing"), "bouncer key file")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bouncer key file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("mg-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = tls_config(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        assert!(tls_config(None).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreachable_lapi_is_named() {
        let dir = std::env::temp_dir().join(format!("mg-lapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "k\n").unwrap();
        // A port nothing listens on, on loopback: refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let config = Crowdsec {
            lapi_url: format!("http://127.0.0.1:{port}"),
            bouncer_key_file: key,
            timeout: 2,
            ..Crowdsec::default()
        };
        let lapi = Lapi::new(&config).unwrap();
        match lapi.stream(true, &config) {
            Err(LapiError::Unreachable { url, .. }) => assert_eq!(url, config.lapi_url),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
